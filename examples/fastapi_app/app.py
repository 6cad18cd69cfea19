"""A FastAPI JSON API with mailguard added through ``add_middleware``.

Run it (from the repository root, with mailguard, fastapi and uvicorn installed)::

    uvicorn --app-dir examples/fastapi_app app:app --port 8000

then try::

    curl -s -X POST localhost:8000/api/login -H 'content-type: application/json' \\
         -d '{"username": "alice", "password": "nope"}'

Five failed logins (401) from one address block its logins for 15 minutes;
InvalidLoginFilter reads the account from the JSON body (``username``) only
for its log lines, and blocks the address, never the account.  DosFilter
caps every address at 20 requests a second and adds ``RateLimit-*`` headers.

``add_middleware`` wraps the app from the inside out: the middleware added
last is the outermost, so DosFilter is added last.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from mailguard import MemoryStore
from mailguard.asgi import DosFilter, InvalidLoginFilter

USERS = {"alice": "wonderland", "bob": "builder"}  # stand-in for your user directory


class Credentials(BaseModel):
    username: str
    password: str


def create_app(store: MemoryStore | None = None) -> FastAPI:
    """The API with both filters on one store (pass one to share or to test)."""
    store = store if store is not None else MemoryStore()
    api = FastAPI(title="mail API")

    @api.post("/api/login")
    async def login(credentials: Credentials) -> JSONResponse:
        if USERS.get(credentials.username) != credentials.password:
            return JSONResponse({"error": "invalid credentials"}, status_code=401)
        return JSONResponse({"token": f"demo-token-for-{credentials.username}"})

    @api.get("/api/messages")
    async def messages(request: Request) -> dict[str, list[str]]:
        return {"messages": ["Welcome to your inbox"]}

    api.add_middleware(
        InvalidLoginFilter,
        max_failed_logins=5,
        failure_interval=300,
        block_duration=900,
        login_paths=["/api/login"],
        store=store,
    )
    api.add_middleware(DosFilter, max_requests_per_sec=20, headers=True, store=store)
    return api


app = create_app()
