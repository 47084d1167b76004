"""``unisam-labelstudio``: serve unisam as a Label Studio ML backend (uvicorn, one process)."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace

import uvicorn

from .app import create_app
from .backend import Settings, UnisamBackend


def main(argv: list[str] | None = None) -> int:
    """Parse the command line (defaults from HOST, PORT, UNISAM_MODEL, LOG_LEVEL) and serve until stopped."""
    parser = argparse.ArgumentParser(
        prog="unisam-labelstudio",
        description="Label Studio ML backend for interactive (smart keypoint/rectangle -> brush mask) "
        "and batch (segment everything) labeling with unisam. Other settings come from environment "
        "variables: LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, BASIC_AUTH_USER, BASIC_AUTH_PASS, "
        "UNISAM_EVERYTHING_PARAMS, UNISAM_IMAGE_CACHE_MB, UNISAM_EMBEDDING_CACHE_MB, UNISAM_ALLOWED_IMAGE_HOSTS, "
        "UNISAM_MAX_DOWNLOAD_MB, LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT.",
    )
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="address to listen on (env HOST)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 9090)), help="port (env PORT, 9090)")
    parser.add_argument(
        "--model",
        default=os.environ.get("UNISAM_MODEL") or None,
        help="registered model name or `unisam export` directory (env UNISAM_MODEL; default: unisam's default model)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "INFO").upper(),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (env LOG_LEVEL)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        backend = UnisamBackend(replace(Settings.from_env(), model=args.model))
    except ValueError as error:
        parser.error(str(error))
    if not backend.settings.label_studio_url:
        logging.getLogger(__name__).warning(
            "LABEL_STUDIO_URL is not set: task images are fetched from the hostname each /setup request names; "
            "set LABEL_STUDIO_URL (and BASIC_AUTH_USER/BASIC_AUTH_PASS) where others can reach this backend"
        )
    app = create_app(backend, preload=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
