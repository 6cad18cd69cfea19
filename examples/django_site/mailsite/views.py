"""The views: a login that answers 401 on a wrong password, and an inbox.

Run the site as ``../manage.py`` says; requests reach these views through
``mailsite.asgi`` or ``mailsite.wsgi``, past the filters.
A real site would call ``django.contrib.auth.authenticate``; the filters only
look at the status code of the answer.
"""

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

USERS = {"alice": "wonderland", "bob": "builder"}  # stand-in for django.contrib.auth

LOGIN_FORM = """<!doctype html><title>Webmail</title>
<form method="post" action="/accounts/login/">
  <input name="username" placeholder="user"> <input name="password" type="password">
  <button>Log in</button>
</form>"""


def login(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse(LOGIN_FORM)
    user = request.POST.get("username", "")
    if USERS.get(user) != request.POST.get("password"):
        return HttpResponse("Wrong user name or password.\n" + LOGIN_FORM, status=401)
    response = HttpResponseRedirect("/inbox/")
    response.set_cookie("session", user, httponly=True)  # a real site uses its sessions
    return response


def inbox(request: HttpRequest) -> HttpResponse:
    user = request.COOKIES.get("session")
    if user not in USERS:
        return HttpResponseRedirect("/accounts/login/")
    return HttpResponse(f"<h1>Inbox of {user}</h1><p>No new mail.</p>")
