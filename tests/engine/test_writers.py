"""The plugin's file-writing event writer: a folder removed after its last write does not fail the run at close."""
import json
import shutil

from fastreid.utils.events import EventStorage, JSONWriter

from mdpr_plugin.engine.writers import OpenedOnFirstWrite


def test_a_folder_removed_after_the_last_write_closes_without_an_error(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    writer = OpenedOnFirstWrite(str(folder), "metrics.json", lambda: JSONWriter(str(folder / "metrics.json")))
    with EventStorage(0) as storage:
        storage.put_scalar("total_loss", 1.0)
        writer.write()
    assert "total_loss" in json.loads((folder / "metrics.json").read_text().splitlines()[0])
    shutil.rmtree(folder)
    writer.close()  # raised OutputWriteError ("OUTPUT_DIR ... was removed"): exit status 1 after a finished run
    assert not folder.exists()
