"""A one-file Django site for ``manage.py runserver`` in tests/test_fail2ban.py.

``DJANGO_SETTINGS_MODULE=logsite``; the settings, the URLs and the WSGI
application (what runserver serves, through ``WSGI_APPLICATION``) are here.
A wrong password is a 401 on ``POST /login``.
"""

from __future__ import annotations

from typing import Any

DEBUG = False
SECRET_KEY = "tests-only"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "logsite"
WSGI_APPLICATION = "logsite.application"
USE_TZ = True


def _login(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse("no", status=401)


def _urls() -> list[Any]:
    from django.urls import path

    return [path("login", _login), path("", _login)]


def __getattr__(name: str) -> Any:
    # built on demand, once Django has read the settings above
    if name == "urlpatterns":
        return _urls()
    if name == "application":
        if "application" not in _built:
            from django.core.wsgi import get_wsgi_application
            from logapp import guard_wsgi

            _built["application"] = guard_wsgi(get_wsgi_application())
        return _built["application"]
    raise AttributeError(name)


_built: dict[str, Any] = {}
