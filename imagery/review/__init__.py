"""The analyst review web app (`berthwatch review`) and what it reads and writes.

- app.py: the FastAPI app and its pages (`create_app`, `serve`);
- security.py: who may reach it and what a request may carry (tokens, CSRF, body limit);
- db.py: the append-only audit table of analysts' decisions and what follows from it;
- media.py: chips, overview, AIS context, timelines and the evidence package the pages show;
- export.py: reviewed scenes as training data (`berthwatch chips export`).
"""

from imagery.review.app import create_app, serve
from imagery.review.security import BindError, check_bind

__all__ = ["BindError", "check_bind", "create_app", "serve"]
