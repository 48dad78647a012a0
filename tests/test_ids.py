"""qmcp_site.ids.uuid7: time-ordered, well-formed, unique primary keys."""

import threading
import time
import uuid

from qmcp_site.ids import uuid7


def test_a_key_is_a_version_7_uuid_carrying_the_millisecond_it_was_made():
    before = time.time_ns() // 1_000_000
    key = uuid7()
    after = time.time_ns() // 1_000_000
    assert isinstance(key, uuid.UUID)
    assert key.version == 7 and key.variant == uuid.RFC_4122
    assert before <= key.int >> 80 <= after


def test_keys_of_later_milliseconds_sort_after_earlier_ones_and_never_repeat():
    first = [uuid7() for _ in range(50_000)]
    time.sleep(0.002)
    later = uuid7()
    assert len(set(first)) == len(first)
    assert later > max(first)
    assert str(later) > max(str(key) for key in first)  # also as text, as SQLite stores it


def test_threads_draw_different_randomness():
    keys: list[uuid.UUID] = []
    lock = threading.Lock()

    def draw():
        mine = [uuid7() for _ in range(2_000)]
        with lock:
            keys.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 8_000
    assert len({key.int & ((1 << 62) - 1) for key in keys}) == 8_000
