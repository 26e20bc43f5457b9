"""The analyst review web app (`berthwatch review`) and what it reads and writes.

- app.py: the FastAPI app, its security and its pages (`create_app`, `serve`);
- db.py: the append-only audit table of analysts' decisions and what follows from it;
- media.py: chips, AIS context, timelines and the evidence package the pages show;
- export.py: reviewed scenes as training data (`berthwatch chips export`).
"""

from imagery.review.app import BindError, check_bind, create_app, serve

__all__ = ["BindError", "check_bind", "create_app", "serve"]
