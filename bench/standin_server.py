"""`python -m bench.standin_server TEMPLATE ARCHIVED OPTIONS`: the stand-ins over HTTP on a
free port (printed as `ready PORT`), until terminated."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.standins import Archive, Fhir, Template, serve


def main() -> None:
    template = Template(**json.loads(Path(sys.argv[1]).read_text()))
    archive = Archive(template, int(sys.argv[2]), **json.loads(sys.argv[3]))
    server = serve(archive, Fhir())
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
