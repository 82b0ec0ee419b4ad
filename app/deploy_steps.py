"""Prefect pull steps of the project's deployments (``deployments/prefect.yaml``).

A pull step runs in the flow-run process, on the worker, each time a deployment's run starts. Prefect's
own ``set_working_directory`` step takes its directory from the YAML, where ``{{ $VAR }}`` is filled in
by ``prefect deploy`` on the deploying machine; this step reads ``RETRAINER_CHECKOUT_DIR`` at run time
instead, so the worker's own copy of the code (``/app`` in the worker image) is the one that runs.
"""

import importlib.util
import os
import sys
from pathlib import Path
from uuid import UUID

CHECKOUT_DIR_VARIABLE = "RETRAINER_CHECKOUT_DIR"
ENTRYPOINT_MARKER = Path("flows") / "retrain.py"  # the deployments' entrypoints are relative to the checkout


class CheckoutNotFoundError(RuntimeError):
    """The directory the flow code should run from is missing or holds no ``flows/retrain.py``."""


def enter_checkout() -> dict[str, str]:
    """Change into the directory the deployments' entrypoints are relative to; ``{"directory": path}``.

    That is ``$RETRAINER_CHECKOUT_DIR`` when set (read now, in the flow-run process), else the
    directory that holds the installed ``flows`` package: the checkout for an editable install,
    ``site-packages`` for ``pip install /app``. Raises `CheckoutNotFoundError` naming the variable and
    the path when the directory or its ``flows/retrain.py`` is missing.
    """
    try:
        directory = checkout_directory()
    except CheckoutNotFoundError as error:
        _log_to_the_flow_run(str(error))
        raise
    os.chdir(directory)
    return {"directory": str(directory)}


def _log_to_the_flow_run(message: str) -> None:
    # Prefect's process worker logs only the step's name to the run; without this line the UI shows
    # "Process exited with status code: 1" and the reason is only in the worker's own output.
    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")  # set by the worker for the flow-run process
    if flow_run_id:
        from prefect.logging.loggers import flow_run_logger

        flow_run_logger(flow_run_id=UUID(flow_run_id)).error(message)


def checkout_directory() -> Path:
    """The directory `enter_checkout` changes into, checked to hold ``flows/retrain.py``."""
    configured = os.environ.get(CHECKOUT_DIR_VARIABLE, "").strip()
    if configured:
        directory = Path(configured).expanduser().absolute()
        origin = f"{CHECKOUT_DIR_VARIABLE}={configured}"
    else:
        directory = _installed_flows_parent()
        origin = f"{CHECKOUT_DIR_VARIABLE} is not set and the installed flows package lies in {directory}"
    if not directory.is_dir():
        raise CheckoutNotFoundError(f"{origin}: no such directory on this worker; {_HINT}")
    if not (directory / ENTRYPOINT_MARKER).is_file():
        raise CheckoutNotFoundError(f"{origin}: {directory / ENTRYPOINT_MARKER} does not exist; {_HINT}")
    return directory


_HINT = (
    f"set {CHECKOUT_DIR_VARIABLE} in the worker's environment to the directory that holds "
    f"{ENTRYPOINT_MARKER} (the project's checkout, or /app in the worker image)"
)


def _installed_flows_parent() -> Path:
    # find_spec locates the package without importing it (importing flows/ is the entrypoint's job).
    spec = importlib.util.find_spec("flows")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise CheckoutNotFoundError(
            f"{CHECKOUT_DIR_VARIABLE} is not set and no flows package is installed in {sys.prefix}; {_HINT}"
        )
    return Path(locations[0]).parent
