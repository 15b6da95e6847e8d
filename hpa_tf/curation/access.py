"""Who may use the curators' page: on a loopback address anyone on this machine, as before; on any other
address (a team's shared page) only requests that carry the access token, printed at start as a URL with
`?token=...` as Jupyter does, or given with --token; a browser keeps it in a cookie once it came in a URL."""

from __future__ import annotations

import ipaddress
import secrets
import socket

from starlette.requests import Request

TOKEN_PARAMETER = "token"


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) reaches this machine only: 127.0.0.0/8, ::1 or localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to a shared address
        return False


def access_token(host: str, token: str | None) -> str | None:
    """The token requests must carry: `token` when given, a new random one when `host` is not loopback,
    else none (a page for this machine alone)."""
    if token:
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(24)


def cookie_name(request: Request) -> str:
    """The cookie that keeps the token, one per port (a browser shares cookies between a host's ports)."""
    return f"hpa_tf_token_{request.url.port or 80}"


def presented_token(request: Request) -> tuple[str, bool]:
    """(the token a request carries, whether it came in the URL): the `token` parameter, else the cookie."""
    given = request.query_params.get(TOKEN_PARAMETER)
    if given is not None:
        return given, True
    return request.cookies.get(cookie_name(request), ""), False


def token_accepted(presented: str, token: str) -> bool:
    """Whether the presented token is the access token, compared in constant time."""
    return secrets.compare_digest(presented.encode(), token.encode())


def start_urls(host: str, port: int, token: str | None) -> list[str]:
    """The page's addresses to print at start: with the token, the machine's name and the served address
    (0.0.0.0 or :: stand for every address of the machine)."""
    query = f"/?{TOKEN_PARAMETER}={token}" if token else "/"
    hosts = [host] if host not in ("0.0.0.0", "::") else [socket.gethostname(), "127.0.0.1"]
    return [f"http://{f'[{h}]' if ':' in h else h}:{port}{query}" for h in hosts]
