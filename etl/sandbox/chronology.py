"""The objects of a workspace that existed at a moment, without a scan per question (for the generator).

The generator picks a random object "created before t" tens of thousands of times while it builds a
workspace. Building that list for each pick made a workspace of 20,000 conversations take minutes (the picks
times the objects). `Chronology` answers `len()` and `[i]` of exactly the same list, in the same order (the
dict's insertion order), from an index built once the dict has stayed the same for a few questions (an
object's `created_at` never changes): until then, and after each change, it builds the list as before, so
a workspace that gains an object between most picks (`advance`) pays no more than it did.

The index: the objects' dict positions, ordered by `created_at`. "Created before t" is a prefix of that
order (a bisection finds its length), and the i-th of them in dict order is the i-th smallest position in
the prefix: a wavelet matrix answers that in one step per bit of a position.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from typing import Any, overload

INDEX_AFTER = 32  # questions about an unchanged dict before indexing it: the build costs ~16 list scans

Obj = dict[str, Any]


class Chronology:
    """Views of one dict of objects (id → object with `created_at`): those created before a moment."""

    def __init__(self, objects: dict[str, Obj]) -> None:
        self.objects = objects
        self._stamp: tuple[Any, ...] | None = None
        self._asked = 0  # questions since the dict last changed
        self.items: list[Obj] = []  # the objects in the dict's order
        self.times: list[int] = []  # their created_at, same order
        self.sorted_times: list[int] = []  # all created_at, sorted
        self.levels: list[tuple[int, list[int], int]] = []  # wavelet matrix: (bit, zeros before i, all zeros)

    def created_before(self, moment: int, *, inclusive: bool = False) -> Sequence[Obj]:
        """The objects with created_at < moment (<= when inclusive), in the dict's order, as a sequence."""
        if not self._indexed():
            if inclusive:
                return [o for o in self.objects.values() if o["created_at"] <= moment]
            return [o for o in self.objects.values() if o["created_at"] < moment]
        cut = bisect_right if inclusive else bisect_left
        return CreatedBefore(self, cut(self.sorted_times, moment), moment, inclusive)

    def nth_position(self, prefix: int, nth: int) -> int:
        """The nth smallest (from 0) dict position among the first `prefix` objects in created_at order."""
        low, high, position = 0, prefix, 0
        for bit, zeros, total in self.levels:
            zeros_low, zeros_high = zeros[low], zeros[high]
            if nth < zeros_high - zeros_low:
                low, high = zeros_low, zeros_high
            else:
                nth -= zeros_high - zeros_low
                position |= 1 << bit
                low, high = total + low - zeros_low, total + high - zeros_high
        return position

    def _indexed(self) -> bool:
        """Whether the index is up to date, building it when the dict has not changed for a while."""
        objects = self.objects
        # the generator only adds objects at the end and deletes merged contacts: size and ends tell a change
        stamp = (len(objects), next(iter(objects), None), next(reversed(objects), None))
        if stamp != self._stamp:
            self._stamp, self._asked, self.levels = stamp, 0, []
        self._asked += 1
        if self._asked < INDEX_AFTER:
            return False
        if self._asked == INDEX_AFTER:
            self._build()
        return True

    def _build(self) -> None:
        objects = self.objects
        self.items = list(objects.values())
        self.times = [int(o["created_at"]) for o in self.items]
        order = sorted(range(len(self.times)), key=self.times.__getitem__)
        self.sorted_times = [self.times[i] for i in order]
        self.levels = []
        for bit in reversed(range(max(1, len(order).bit_length()))):
            zeros, count = [0], 0
            for position in order:
                count += not (position >> bit) & 1
                zeros.append(count)
            self.levels.append((bit, zeros, count))
            order = [p for p in order if not (p >> bit) & 1] + [p for p in order if (p >> bit) & 1]


class CreatedBefore(Sequence[Obj]):
    """`[o for o in objects.values() if o["created_at"] < moment]` (or <=), without building it."""

    def __init__(self, chronology: Chronology, length: int, moment: int, inclusive: bool) -> None:
        self.chronology, self.length, self.moment, self.inclusive = chronology, length, moment, inclusive

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, position: int) -> Obj: ...
    @overload
    def __getitem__(self, position: slice) -> list[Obj]: ...
    def __getitem__(self, position: int | slice) -> Obj | list[Obj]:
        if isinstance(position, slice):
            return list(self)[position]
        if position < 0:
            position += self.length
        if not 0 <= position < self.length:
            raise IndexError("CreatedBefore index out of range")
        return self.chronology.items[self.chronology.nth_position(self.length, position)]

    def __iter__(self) -> Iterator[Obj]:
        moment, inclusive = self.moment, self.inclusive
        for obj, created in zip(self.chronology.items, self.chronology.times, strict=True):
            if created <= moment if inclusive else created < moment:
                yield obj


class Joined(Sequence[str]):
    """The ids of a view's objects followed by more ids: a pick-from list without building it."""

    def __init__(self, objects: Sequence[Obj], more: list[str]) -> None:
        self.objects, self.more = objects, more

    def __len__(self) -> int:
        return len(self.objects) + len(self.more)

    @overload
    def __getitem__(self, position: int) -> str: ...
    @overload
    def __getitem__(self, position: slice) -> list[str]: ...
    def __getitem__(self, position: int | slice) -> str | list[str]:
        if isinstance(position, slice):
            return list(self)[position]
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError("Joined index out of range")
        first = len(self.objects)
        return self.objects[position]["id"] if position < first else self.more[position - first]

    def __iter__(self) -> Iterator[str]:
        yield from (o["id"] for o in self.objects)
        yield from self.more
