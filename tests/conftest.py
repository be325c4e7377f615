from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = "http://127.0.0.1:8000"
SERVE_CONFIG = ROOT / "serve_config.yaml"
DEV_SET = ROOT.parent / "shared" / "eval" / "dev.jsonl"


@pytest.fixture(scope="session")
def serve_config() -> dict:
    return yaml.safe_load(SERVE_CONFIG.read_text())


@pytest.fixture(scope="session")
def router_args(serve_config) -> dict:
    """The application's args: the serving graph (RouterConfig)."""
    return serve_config["applications"][0]["args"]


@pytest.fixture(scope="session")
def routing_args(serve_config) -> dict:
    """The routing block: the user_config the Ingress and Classifier deployments share (RoutingConfig)."""
    from serve_app.config_file import routing_block

    return routing_block(serve_config["applications"][0])


@pytest.fixture(scope="session")
def app_config(serve_config):
    from serve_app.config_file import app_config

    return app_config(serve_config)


@pytest.fixture(scope="session")
def encoder(app_config):
    """The shipped embedding model as the config loads it (backend, max_seq_length), once for every test."""
    from serve_app.encoder import load_encoder

    c = app_config.router.classifier
    return load_encoder(c.model, c.backend, c.max_seq_length)


@pytest.fixture(scope="session")
def graph():
    """``serve run serve_config.yaml``, exactly as a user starts it, shared by every end-to-end module.

    Modules that change it (a live routing update, a killed replica) put it back as they found it.
    """
    from tests.local_serve import StartupError, serve_run

    try:
        with serve_run(SERVE_CONFIG, BASE, timeout_s=1200) as running:
            print(f"\nrouter healthy after {running.startup_s:.0f}s")
            yield running
    except StartupError as exc:
        pytest.fail(str(exc))
