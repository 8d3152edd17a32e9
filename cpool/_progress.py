"""progress= of the map family: what is shown as items are delivered.

A call made with ``progress=`` gets a result object of its own class
(results.py's ``_MapResultWithProgress``, imap.py's ``_WithProgress``
iterators): it counts the items of each chunk delivered to it, in the
delivering thread, and hands the count to one of these.  A call without
``progress=`` gets the plain classes, so the delivery path does no work for
it at all.

* ``_Callback``: the user's callable, called ``fn(done, total)`` after each
  delivery, one call at a time, with counts that only grow.  One that raises
  an Exception is reported as a raising callback is (on stderr, with its
  traceback), once, and not called again for that call; the map goes on.
* ``_PlainBar``: a one-line bar on stderr, redrawn with a carriage return
  at most ``REDRAW_EVERY`` seconds apart: percent, done/total, elapsed
  time and rate.
* ``_TqdmBar``: tqdm's bar, when tqdm can be imported.

A bar is finished (drawn once more, then a newline) exactly once: when the
call's outcome is in (the last result, or the error that ends it), or when
the caller's wait for it ends with an exception (Ctrl-C), or when the pool
is terminated; later counts are not drawn.  So a traceback that follows
starts on a line of its own.
"""
import os
import sys
import traceback
from _thread import allocate_lock as _allocate_lock
from time import monotonic as _monotonic

__all__ = []

REDRAW_EVERY = 0.1   # seconds: at most ~10 redraws a second
END_WAIT = 1.0       # seconds end() waits for a redraw in another thread


def check(progress):
    """progress, checked: None, a bool or a callable."""
    if progress is None or isinstance(progress, bool) or callable(progress):
        return progress
    raise TypeError(f"progress must be None, True, False or a callable, "
                    f"not {type(progress).__name__}")


def total_of(iterable):
    """The number of items, or None when the input has no len()."""
    return len(iterable) if hasattr(iterable, "__len__") else None


def start(progress, total):
    """What shows the progress of a call of `total` items (None: unknown),
    or None when nothing is to be shown (progress None or False, or True
    with no stderr to draw on).  A bar is drawn at once, at 0."""
    if progress is None or progress is False:
        return None
    if progress is not True:
        return _Callback(progress, total)
    if sys.stderr is None:
        return None
    try:
        from tqdm import tqdm
    except Exception:   # not installed, or hidden (sys.modules["tqdm"] = None)
        return _PlainBar(total)
    return _TqdmBar(tqdm, total)


class _Progress:
    """The count of items delivered to one call's result object, and how
    it is shown.

    The result object counts (``done``, ``last``) in call-free steps, as
    its _set changes its own state (see ApplyResult._set): a delivery
    repeated after a Ctrl-C is counted once.  show() is called after each
    delivery; the showing (_show) is done by one thread at a time, never
    waited for: a thread that finds another one showing leaves its count to
    it, which looks again before it leaves."""

    def __init__(self, total):
        self.total = total
        self.done = 0        # items delivered
        self.last = -1       # the chunk counted last (a repeat is not counted)
        self._final = False  # the call's outcome is in
        self._lock = _allocate_lock()
        self._seen = (0, False)   # what _show was last given

    def show(self, final=False):
        """Show the count (after a delivery; final: the call's outcome is in)."""
        if final:
            self._final = True
        lock = self._lock
        while (self.done, self._final) != self._seen:
            if not lock.acquire(False):
                return   # another thread shows it, and looks again after
            try:
                self._seen = seen = (self.done, self._final)
                self._show(*seen)
            finally:
                lock.release()

    def end(self):
        """The call ended some other way (an exception in the caller's wait,
        terminate, abandoned): finish a bar now."""

    def _show(self, done, final):
        raise NotImplementedError


class _Callback(_Progress):
    """progress=fn: fn(done, total) after each delivery."""

    def __init__(self, fn, total):
        super().__init__(total)
        self._fn = fn
        self._told = 0

    def _show(self, done, final):
        fn = self._fn
        if fn is None or done <= self._told:
            return
        self._told = done
        try:
            fn(done, self.total)
        except Exception:
            # As a raising callback is reported (results._call_back), but
            # once: a broken progress function would otherwise print a
            # traceback for every chunk.
            self._fn = None
            print(f"Exception in cpool progress callable {fn!r} "
                  f"(not called again for this call):", file=sys.stderr)
            traceback.print_exc()


class _Bar(_Progress):
    """A bar on stderr, finished exactly once."""

    def __init__(self, total):
        super().__init__(total)
        self._ended = False

    def _show(self, done, final):
        if self._ended:
            return
        try:
            if final:
                self._ended = True
                self._finish(done)
            else:
                self._update(done)
        except Exception:   # stderr closed or broken: stop drawing
            self._ended = True

    def end(self):
        # Waits (boundedly) for a redraw under way in another thread, so that
        # what the caller prints next starts after the bar's newline.
        got = self._lock.acquire(True, END_WAIT)
        try:
            if not self._ended:
                self._ended = True
                self._finish(self.done)
        except Exception:
            pass
        finally:
            if got:
                self._lock.release()


class _PlainBar(_Bar):
    """cpool's own bar: one line, redrawn with a carriage return."""

    WIDTH = 30   # the bar's characters, at most

    def __init__(self, total):
        super().__init__(total)
        self._t0 = self._drawn = _monotonic()
        self._len = 0   # of the line drawn last, to blank what it leaves
        try:
            cols = os.get_terminal_size(sys.stderr.fileno()).columns
        except (AttributeError, ValueError, OSError):
            cols = 0
        self._cols = cols if cols >= 40 else 80
        self._draw(0, self._t0)

    def _update(self, done):
        now = _monotonic()
        if now - self._drawn >= REDRAW_EVERY:
            self._draw(done, now)

    def _finish(self, done):
        self._draw(done, _monotonic(), "\n")

    def _draw(self, done, now, end=""):
        self._drawn = now
        line = self._line(done, now - self._t0)
        pad = " " * max(0, self._len - len(line))
        self._len = len(line)
        err = sys.stderr
        err.write(f"\r{line}{pad}{end}")
        err.flush()

    def _line(self, done, elapsed):
        total = self.total
        rate = done / elapsed if elapsed > 0 else 0.0
        stats = f"[{_clock(elapsed)}, {_rate(rate)}]"
        if total is None:
            return f"{done} it {stats}"
        frac = min(1.0, done / total) if total else 1.0
        rest = f"| {done}/{total} {stats}"
        width = min(self.WIDTH, self._cols - 1 - 5 - len(rest))
        if width < 5:
            return f"{frac:4.0%} {rest[2:]}"
        filled = int(frac * width)
        return f"{frac:4.0%}|{'#' * filled}{' ' * (width - filled)}{rest}"


def _clock(seconds):
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _rate(per_second):
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if per_second >= scale:
            return f"{per_second / scale:.2f}{unit} it/s"
    return f"{per_second:.2f} it/s"


class _TqdmBar(_Bar):
    """tqdm's bar (it limits its own redraws: mininterval, 0.1 s)."""

    def __init__(self, tqdm, total):
        super().__init__(total)
        self._bar = tqdm(total=total, file=sys.stderr)

    def _update(self, done):
        self._bar.update(done - self._bar.n)

    def _finish(self, done):
        bar = self._bar
        if done > bar.n:
            bar.update(done - bar.n)
        bar.close()
