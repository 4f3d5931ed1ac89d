"""An image upload as multipart/form-data, turned into the JSON body of the same request.

Browsers, curl's `-F` and Swagger UI's "Try it out" send files as multipart/form-data; the
audit endpoints take JSON. A form with an `image` file part and the other fields as text parts
(`prompt`, `answer`, and any other field of the request, e.g. `regions=16`, `verify=true` or
`heatmap={"encoding": "png"}`) is converted here: the image base64-encoded, `prompt`, `answer`
and `correct_to` kept as text, every other part read as JSON where it parses (`method=tam` stays
the string "tam"). The middleware converts before FastAPI sees the body, so validation, limits
and errors are the JSON path's. The stdlib's email parser reads the form: no extra dependency.
"""

from __future__ import annotations

import base64
import json
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

TEXT_FIELDS = frozenset({"prompt", "answer", "correct_to"})  # never read as JSON: "42" stays an answer


class FormError(ValueError):
    """The form cannot become a request body (HTTP 400)."""


def form_to_json(body: bytes, content_type: str) -> bytes:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        raise FormError("the multipart/form-data body does not parse (is the boundary right?)")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise FormError("a form part has no name")
        if name in fields:
            raise FormError(f"form field {name!r} is given twice")
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        if name == "image":
            fields[name] = base64.b64encode(data).decode()
        elif part.get_filename() is not None:
            raise FormError(f"form field {name!r} is a file; only image may be")
        else:
            fields[name] = _value(name, data)
    return json.dumps(fields).encode()


def _value(name: str, data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError(f"form field {name!r} is not UTF-8 text") from None
    if name in TEXT_FIELDS:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
