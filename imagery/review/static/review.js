// berthwatch review: a click on a chip becomes scene pixel coordinates in the edit form.
// Data comes from data- attributes only; nothing here builds markup from strings.
"use strict";

function chipClick(event) {
  const img = event.currentTarget;
  const box = img.getBoundingClientRect();
  const scale = Number(img.dataset.scale);
  // Screen pixels -> chip image pixels -> scene pixels (the chip starts at col0, row0).
  const ix = (event.clientX - box.left) * (img.naturalWidth / box.width);
  const iy = (event.clientY - box.top) * (img.naturalHeight / box.height);
  const px = Number(img.dataset.col0) + ix / scale;
  const py = Number(img.dataset.row0) + iy / scale;
  document.getElementById("px_x").value = px.toFixed(2);
  document.getElementById("px_y").value = py.toFixed(2);
  const form = document.getElementById("edit-form");
  const button = document.getElementById("apply-chip");
  if (form.requestSubmit) {
    form.requestSubmit(button);
  } else {
    button.click();
  }
}

function chipHover(event) {
  const img = event.currentTarget;
  const box = img.getBoundingClientRect();
  const scale = Number(img.dataset.scale);
  const px = Number(img.dataset.col0) + (event.clientX - box.left) * (img.naturalWidth / box.width) / scale;
  const py = Number(img.dataset.row0) + (event.clientY - box.top) * (img.naturalHeight / box.height) / scale;
  img.title = "scene pixel " + px.toFixed(1) + ", " + py.toFixed(1) + ": click to apply";
}

document.addEventListener("DOMContentLoaded", function () {
  if (!document.getElementById("edit-form")) {
    return;
  }
  for (const img of document.querySelectorAll("img.chip")) {
    img.addEventListener("click", chipClick);
    img.addEventListener("mousemove", chipHover);
  }
});
