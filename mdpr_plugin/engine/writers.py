"""The plugin's event writers (fastreid's are in fastreid/utils/events.py)."""
import os

from fastreid.utils.events import CommonMetricPrinter, EventWriter, get_event_storage

from .write_faults import remake_removed_folder, writing_into


class MetricPrinter(CommonMetricPrinter):
    """fastreid's progress printer, writing at most once per iteration: a second write at the same iteration
    (a run of three or fewer iterations ends that way) divides by zero in fastreid's ETA estimate."""

    def write(self):
        if self._last_write is not None and self._last_write[0] == get_event_storage().iter:
            return
        super().write()


class OpenedOnFirstWrite(EventWriter):
    """A writer of the file ``name`` in OUTPUT_DIR ``folder``, made (by ``make``) at its first write: building the
    trainer (which a refused ``--resume`` does) writes nothing into OUTPUT_DIR. A folder removed during training is
    made again, as for a checkpoint (``on_recreated`` restores the run's own files), and the file started anew in
    it; read-only or full stops the run in one line (:func:`mdpr_plugin.engine.write_faults.writing_into`)."""

    def __init__(self, folder, name, make, on_recreated=None):
        self.folder, self.name = folder, name
        self._make, self._on_recreated = make, on_recreated
        self._writer = self._written_in = None

    def write(self):
        if not os.path.isdir(self.folder):
            remake_removed_folder(self.folder, self.name, self._on_recreated)
        if self._writer is not None and not os.path.samestat(self._written_in, os.stat(self.folder)):
            self._writer.close()  # its file went with the removed folder
            self._writer = None
        with writing_into(self.folder, self.name):
            if self._writer is None:
                self._writer, self._written_in = self._make(), os.stat(self.folder)
            self._writer.write()

    def close(self):
        if self._writer is None:
            return
        if not os.path.isdir(self.folder):  # removed after the last write: its file went with it, nothing to save
            self._writer.close()
            return
        with writing_into(self.folder, self.name):
            self._writer.close()
