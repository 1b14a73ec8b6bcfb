"""Progress lines for long evaluation steps (feature extraction, distances, re-ranking)."""
import datetime
import logging
import time


class Progress:
    """Logs ``what: done/total (pct), elapsed, ETA`` at most every ``period`` seconds.

    Evaluation steps at benchmark scale run for minutes without any other output; a line every few
    seconds tells the user the process is alive and how long is left. ``total`` is in any unit
    (rows, blocks, pairs): the ETA assumes the rate so far holds.
    """

    def __init__(self, what, total, logger=None, period=5.0):
        self.what = what
        self.total = max(int(total), 1)
        self.logger = logger or logging.getLogger(__name__)
        self.period = period
        self.start = time.perf_counter()
        self._last = self.start

    def update(self, done, force=False):
        now = time.perf_counter()
        if not force and now - self._last < self.period:
            return
        self._last = now
        elapsed = now - self.start
        fraction = min(done / self.total, 1.0)
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")
        eta_text = str(datetime.timedelta(seconds=int(eta))) if eta == eta else "?"
        self.logger.info("%s: %d/%d (%.0f%%), %.1f s elapsed, ETA %s",
                         self.what, done, self.total, 100 * fraction, elapsed, eta_text)

    def done(self):
        self.logger.info("%s: done in %.1f s", self.what, time.perf_counter() - self.start)
