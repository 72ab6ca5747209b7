"""The workflow: :class:`Workflow` runs the phases (:mod:`.phases`, :mod:`.lifecycle`) in order
against a transport, each recorded in the run folder, then :func:`.summary.summarize`."""

from .context import Context, Metering, deploy_message, edge_nodes, unmetered
from .driver import Workflow, prepare

__all__ = ["Context", "Metering", "Workflow", "deploy_message", "edge_nodes", "prepare", "unmetered"]
