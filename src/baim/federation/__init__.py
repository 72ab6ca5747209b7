"""baim as a Flower App (Message API): the cloud is a ServerApp, each edge a ClientApp.

Read ``server_app.py`` and ``client_app.py``; both are thin shells over the same workflow
(:class:`baim.workflow.Workflow`) and edge node (:class:`baim.edge.EdgeNode`) that the
in-process engine runs, connected by :class:`FlowerTransport`.
"""

import os

# Flower must neither phone home nor look for updates (no network beyond the federation).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
