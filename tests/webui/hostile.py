"""A hostile message for the preview tests: scripts, remote content, CSS, bidi and encoded-word tricks."""

from __future__ import annotations

import base64


def _word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def hostile(remote: str = "http://127.0.0.1:9") -> bytes:
    """A phishing mail whose HTML tries to load ``remote`` and run scripts in every way it can."""
    html = f"""<!doctype html><html><head>
<base href="{remote}/">
<meta http-equiv="refresh" content="0;url={remote}/refresh">
<link rel="stylesheet" href="{remote}/style.css">
<style>body {{ background: url({remote}/bg.png) }} @import url({remote}/import.css);</style>
<script>window.pwned = 1; new Image().src = "{remote}/script.png";</script>
<script src="{remote}/evil.js"></script>
</head><body onload="window.pwned = 2">
<p>Dear customer,</p>
<p>Please <a href="javascript:window.pwned=3">verify your account</a> or visit
<a href="http://phish.example/login">our login page</a>.</p>
<img src="{remote}/track.png" onerror="window.pwned = 4" width="1" height="1">
<iframe src="{remote}/frame.html"></iframe>
<object data="{remote}/object.swf"></object>
<svg><script>window.pwned = 5</script><image href="{remote}/svg.png"/></svg>
<form action="{remote}/steal" method="post"><input name="password"></form>
<div style="background-image: url({remote}/inline.png)">Line one<br>line two</div>
</body></html>"""
    headers = (
        f"From: {_word('PayPal Security <service@paypal.com>')} {_word(chr(0x202E) + 'moc.lapyap')}"
        " <evil@bad.example>\r\n"
        "To: alice@example.com\r\n"
        f"Subject: {_word(chr(60) + 'script>alert(' + chr(39) + 'subject' + chr(39) + ')</script>')}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n")
    return headers.encode() + base64.encodebytes(html.encode())
