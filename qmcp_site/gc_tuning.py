"""The garbage collector set for a long-lived server, once the application is loaded.

A full collection walks every object the collector tracks, and a loaded QMCP tracks
hundreds of thousands (Django, the apps, the libraries) that live as long as the process:
under load, a full collection held every call for tens of milliseconds, and at 64 calls
at once the p99 latency was three to five times the p50 (``benchmarks/RESULTS.md``).
:func:`tune` moves what is loaded into the collector's permanent generation
(``gc.freeze``), so a collection walks only what requests made, and collects the
youngest generation after 10,000 allocations rather than CPython's 700, a few calls'
worth, since nearly everything a call makes is freed when it ends. The older generations
keep CPython's ratios, so cyclic garbage that outlived a few calls (a dropped client's
large reply, say) is still freed within about a million allocations; 50,000 with rarer
full collections measured a little faster and held more memory between bursts.

:func:`tune` is called once, from ``qmcp_site.asgi``, after everything has been imported.
"""

import gc

THRESHOLDS = (10_000, 10, 10)  # generations 0, 1 and 2, as gc.set_threshold takes them


def tune() -> None:
    gc.collect()  # what importing left as garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
