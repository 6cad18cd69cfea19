"""Tell InvalidLoginFilter how a login went, from django.contrib.auth's signals.

Run the site as ``../manage.py`` says; ``settings.MIDDLEWARE`` lists
:class:`LoginResultMiddleware`, and importing this module connects the
receivers.

``django.contrib.auth.authenticate`` (``django/contrib/auth/__init__.py``)
sends ``user_login_failed`` when no backend accepts the credentials, and
``django.contrib.auth.login`` sends ``user_logged_in``; both pass the request.
The middleware turns what they said into the response header
``X-Login-Result: fail`` or ``ok``, which InvalidLoginFilter reads on its
login paths (its ``result_header``), trusts over the status and removes
before the response leaves.  So any view that calls ``authenticate()`` is
judged right, whatever it answers: here ``/api/login/``, whose JSON answer is
a 200 either way.  Add such paths to ``login_paths``.
"""

from collections.abc import Callable
from typing import Any

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponseBase

_MARK = "mailguard.login_result"


@receiver(user_login_failed)
def _failed(sender: Any, credentials: Any, request: HttpRequest | None = None, **kw: Any) -> None:
    if request is not None:
        request.META[_MARK] = "fail"


@receiver(user_logged_in)
def _succeeded(sender: Any, request: HttpRequest | None = None, **kw: Any) -> None:
    if request is not None:
        request.META.setdefault(_MARK, "ok")  # a failure before it in the request stands


class LoginResultMiddleware:
    """Adds ``X-Login-Result`` to a response whose request tried a password."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        said = request.META.get(_MARK)
        if said is not None:
            response["X-Login-Result"] = said
        return response
