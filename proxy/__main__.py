"""`python -m proxy` is `oaigate serve`."""

from .cli import serve

serve(prog_name="python -m proxy")
