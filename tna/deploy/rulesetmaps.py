"""The maps of the newest rule set: its sets of rules and its mirrored
ipsets, made by the first load of one of its programs and shared by every
later one (filling 10,000 entries once, not per interface).

A rule joining or leaving a set of rules rewrites the set-of-rules maps
in place (rewrite(); the programs stay: Datapath.keep_programs()); an
ipset member change writes the difference into the ipset maps
(sync_ipsets()).  An older rule set's maps are no longer written: its
programs keep them until they are replaced.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tna.bpf import libbpf as bpf
from tna.deploy.mapwrite import load_with_sets, set_room, write_diff
from tna.model.firewall import Firewall

if TYPE_CHECKING:  # what synthesis hands over; deploy runs none of its code
    from tna.synth.build import Artifact

log = logging.getLogger(__name__)


class RuleSetMaps:
    def __init__(self) -> None:
        self.maps: tuple[Firewall, dict[str, bpf.Map]] | None = None  # the rule set, its maps (our descriptors)
        # what its set-of-rules maps hold (shadow) and can hold
        self._set_shadow: dict[str, dict[bytes, bytes]] = {}
        self._set_caps: dict[str, int] = {}
        # the mirrored ipsets: what their maps must hold (the daemon's), what
        # the rule set's maps hold (shadow), and their capacities
        self.ipset_entries: dict[str, dict[bytes, bytes]] = {}
        self.ipset_shadow: dict[str, dict[bytes, bytes]] = {}
        self._ipset_caps: dict[str, int] = {}

    def rule_set(self) -> Firewall | None:
        return self.maps[0] if self.maps else None

    def holds(self, art: Artifact) -> bool:
        """A load of art creates no map (it reuses the rule set's)."""
        return art.firewall is None or self.rule_set() == art.firewall

    def load(self, obj: bpf.BpfObject, art: Artifact) -> None:
        """Load obj with art's rule set's maps: the ones there if they are
        that rule set's, else new ones (filled before anything can attach
        the program), which become the newest rule set's."""
        fw = art.firewall
        same = self.maps[1] if self.maps is not None and self.maps[0] == fw else None
        ipsets = {name: self.ipset_entries.get(name, {}) for name in art.ipset_maps}
        maps = load_with_sets(obj, {**art.sets, **ipsets}, same, art.ipset_maps)
        if same is None and fw is not None:
            self.drop()
            self.maps = (fw, maps)
            self._set_shadow = {name: dict(entries) for name, entries in art.sets.items()}
            self._set_caps = {name: set_room(len(entries)) for name, entries in art.sets.items()}
            self.ipset_shadow = {name: dict(entries) for name, entries in ipsets.items()}
            self._ipset_caps = dict(art.ipset_maps)

    def drop(self) -> None:
        """Our handles on the rule set's maps (programs keep theirs)."""
        if self.maps is not None:
            for m in self.maps[1].values():
                m.close()
            self.maps = None
            self._set_shadow, self._set_caps = {}, {}
            self.ipset_shadow, self._ipset_caps = {}, {}

    def rewrite(self, art: Artifact) -> bool:
        """The set-of-rules maps rewritten in place with art's entries, if
        they have room (their ipset maps stay); they are art's rule set's
        then.  False: nothing changed, or a write failed, and then no rule
        set has maps (every program's load makes them anew)."""
        assert self.maps is not None
        maps = self.maps[1]
        if (maps.keys() != art.sets.keys() | art.ipset_maps.keys() or art.ipset_maps != self._ipset_caps
                or any(len(entries) > self._set_caps[name] for name, entries in art.sets.items())):
            return False
        for name, entries in art.sets.items():
            try:
                failed = bool(write_diff(maps[name], self._set_shadow[name], entries, name))
            except OSError as e:  # a delete refused
                log.warning("map %s: %s", name, e)
                failed = True
            if failed:
                self.drop()
                return False
        self.maps = (art.firewall, maps)
        return True

    def sync_ipsets(self, entries: dict[str, dict[bytes, bytes]], fw: Firewall | None) -> dict[str, str]:
        """The mirrored ipsets' members (setgen.all_entries()) for rule set
        fw: what the next load fills new maps with, and the difference
        written now into fw's maps (a member change: no new program).
        Adds go first: a net replaced by its halves is never missing.
        Returns the maps a write failed for, with the error: an entry
        missing from a set's map says "not in the set", so the caller must
        take that set's rules to the kernel path."""
        self.ipset_entries = entries
        failed: dict[str, str] = {}
        if self.maps is not None and self.maps[0] == fw:
            for name, shadow in self.ipset_shadow.items():
                errors = write_diff(self.maps[1][name], shadow, entries.get(name, {}), name, adds_first=True)
                if errors:
                    failed[name] = str(errors[0])
        return failed

    def fill(self) -> dict[str, tuple[int, int]]:
        """(entries, capacity) of each map, from what was written (safe from
        another thread); a set-of-rules map has room to change in place."""
        return {name: (len(shadow), caps.get(name, 0))
                for shadows, caps in ((self._set_shadow, self._set_caps), (self.ipset_shadow, self._ipset_caps))
                for name, shadow in list(shadows.items())}
