"""URLs of the example site (run it as ``../manage.py`` says).

``/accounts/login/`` is django.contrib.auth's own ``LoginView``, the view
``preset="django"`` knows; ``/api/login/`` a JSON login whose failures are
told by ``login_result.py``.
"""

from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/login/", views.api_login),
    path("inbox/", views.inbox),
]
