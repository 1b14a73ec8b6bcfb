"""The plugin's log lines go where fastreid's go.

fastreid's ``setup_logger`` (called by ``default_setup`` in fastreid's own scripts, and by the plugin's
trainer) gives the "fastreid" logger its level, a console handler and ``OUTPUT_DIR/log.txt``. The plugin logs
under "mdpr_plugin"; without this its lines went to bare stderr and never reached log.txt. The "mdpr_plugin"
logger is made a child of the "fastreid" logger (logging's hierarchy goes by dotted names, so it is set once
here): its records take fastreid's level and reach fastreid's handlers, whichever script set them up, and from
there the root logger's when fastreid's logger propagates. Nothing of fastreid's is changed.
"""
import logging


def route_to_fastreid():
    """Make the "mdpr_plugin" logger a child of the "fastreid" logger (idempotent)."""
    logging.getLogger("mdpr_plugin").parent = logging.getLogger("fastreid")
