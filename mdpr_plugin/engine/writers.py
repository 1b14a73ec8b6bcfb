"""The plugin's event writers (fastreid's are in fastreid/utils/events.py)."""
from fastreid.utils.events import CommonMetricPrinter, EventWriter, get_event_storage

from .output_files import writing_into


class MetricPrinter(CommonMetricPrinter):
    """fastreid's progress printer, writing at most once per iteration: a second write at the same iteration
    (a run of three or fewer iterations ends that way) divides by zero in fastreid's ETA estimate."""

    def write(self):
        if self._last_write is not None and self._last_write[0] == get_event_storage().iter:
            return
        super().write()


class OpenedOnFirstWrite(EventWriter):
    """A writer of the file ``name`` in OUTPUT_DIR ``folder``, made (by ``make``) at its first write: building the
    trainer (which a refused ``--resume`` does) writes nothing into OUTPUT_DIR. The folder removed, read-only or full
    stops the run in one line (:func:`mdpr_plugin.engine.output_files.writing_into`)."""

    def __init__(self, folder, name, make):
        self.folder, self.name = folder, name
        self._make, self._writer = make, None

    def write(self):
        with writing_into(self.folder, self.name):
            if self._writer is None:
                self._writer = self._make()
            self._writer.write()

    def close(self):
        if self._writer is not None:
            with writing_into(self.folder, self.name):
                self._writer.close()
