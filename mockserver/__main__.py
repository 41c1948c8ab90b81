"""`python -m mockserver` is `oaigate mock`."""

from .cli import mock

mock(prog_name="python -m mockserver")
