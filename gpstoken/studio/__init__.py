"""``gpstoken studio``: an interactive layout editor in the browser.

Load a photo, choose the token count, draw priority boxes, add / move / remove Gaussians and
re-encode, with PSNR before and after; or generate an image, edit its layout and regenerate
its texture. A small standard-library HTTP server (:mod:`.server`) serves one static page
(``static/``) and a JSON API over :class:`~gpstoken.studio.engine.Studio`. See docs/studio.md.

>>> from gpstoken.studio import serve
>>> serve(port=7860)            # http://127.0.0.1:7860/
"""
from .engine import Studio
from .requests import Limits, StudioError
from .server import StudioServer, make_server, serve

__all__ = ["Limits", "Studio", "StudioError", "StudioServer", "make_server", "serve"]
