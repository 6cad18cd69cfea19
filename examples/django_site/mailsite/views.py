"""The views: an inbox behind django.contrib.auth, and a JSON login for scripts.

Run the site as ``../manage.py`` says; requests reach these views through
``mailsite.asgi`` or ``mailsite.wsgi``, past the filters.  The HTML login is
Django's own ``LoginView`` (see ``urls.py``).
"""

import json

from django.contrib.auth import authenticate, login
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_POST


@login_required
def inbox(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"<h1>Inbox of {request.user.get_username()}</h1><p>No new mail.</p>")


@require_POST
def api_login(request: HttpRequest) -> JsonResponse:
    """``{"username", "password"}`` in, ``{"ok": true|false}`` out, always a 200.

    A 200 says nothing to InvalidLoginFilter here: the ``user_login_failed``
    and ``user_logged_in`` signals do, through ``X-Login-Result`` (see
    ``login_result.py``).
    """
    try:
        doc = json.loads(request.body)
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    user = authenticate(
        request, username=str(doc.get("username", "")), password=str(doc.get("password", ""))
    )
    if user is None:
        return JsonResponse({"ok": False})
    login(request, user)
    return JsonResponse({"ok": True})
