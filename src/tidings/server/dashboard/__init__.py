"""The dashboard at ``/``: pages rendered by the server (Jinja2, autoescaped), a little plain
JavaScript for the live feed, a stylesheet; all shipped in this package (no build step, nothing
from another site). ``pages.Dashboard`` holds the routes; ``session`` the login and CSRF rules;
``figures`` what the pages show; ``charts`` the samples behind the hour's charts."""
