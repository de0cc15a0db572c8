"""Issue 13: hostile or corrupt checkpoints raise only `CheckpointError`, in bounded memory, executing nothing.

The fuzz runs in a subprocess whose address space is capped (``resource.RLIMIT_AS``: what it uses after a first
load plus 1 GiB, so a loader that believed a 1 KB file declaring ``Dense(40000, 40000)`` would fail with
MemoryError instead of allocating 12.8 GB) and which records every audit event that would execute or import
code (``sys.addaudithook``). Its cases, seeded: every truncation of a checkpoint, single-bit flips at 3,000
positions, and every field of the JSON header replaced by each of a list of hostile values and re-sealed with a
valid CRC, plus the cases the issue names. Then a kill-during-save loop, stale temporaries and refused
``load_into`` calls that must change nothing.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
from backprop.errors import ArgumentTypeError, CheckpointError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and /proc are Linux's")

FUZZER = textwrap.dedent('''
    import json, os, random, resource, struct, sys, zlib
    import numpy as np
    import backprop as bp
    from backprop.errors import CheckpointError

    source, scratch, seed, flips = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    data = open(source, "rb").read()
    bp.load_checkpoint(source)  # imports and registries warmed up before the cap and the audit hook
    model = bp.load(source)
    FORBIDDEN = {"exec", "compile", "os.system", "subprocess.Popen", "os.posix_spawn", "os.spawn", "os.exec",
                 "os.fork", "pickle.find_class", "ctypes.dlopen", "marshal.loads"}
    known_modules = set(sys.modules)
    events = []

    def audit(event, arguments):
        if event in FORBIDDEN or (event == "import" and arguments[0] not in known_modules):
            events.append(f"{event} {str(arguments)[:80]}")

    vm = int([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmSize")][0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
    sys.addaudithook(audit)

    header = struct.Struct("<8sIQI")
    magic, version, length, _ = header.unpack_from(data)
    document = json.loads(data[header.size:header.size + length])
    payload = data[header.size + length:]

    def seal(text):
        encoded = text.encode("utf-8")
        return header.pack(magic, version, len(encoded), zlib.crc32(encoded)) + encoded + payload

    def paths(node, prefix=()):
        yield prefix
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            yield from paths(child, prefix + (key,))

    def replaced(path, value):
        copy = json.loads(json.dumps(document))
        if not path:
            return value
        target = copy
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return copy

    DEEP = "[" * 100000 + "]" * 100000
    HOSTILE = [None, 5, -1, 2**70, 1e308, 0.5, "abc", "os.system", "", [], {}, True, [1, 2], {"a": 1},
               float("inf"), "DEEP"]
    cases = []
    for cut in range(len(data)):
        cases.append(("truncation", data[:cut]))
    rng = random.Random(seed)
    for position in rng.sample(range(len(data)), min(flips, len(data))):
        flipped = bytearray(data)
        flipped[position] ^= 1 << rng.randrange(8)
        cases.append(("bit flip", bytes(flipped)))
    for path in paths(document):
        for value in HOSTILE:
            text = json.dumps(replaced(path, "@DEEP@" if value == "DEEP" else value))
            cases.append(("json " + "/".join(map(str, path)), seal(text.replace('"@DEEP@"', DEEP))))
        if path and isinstance(path[-1], str):  # the field removed altogether
            copy = json.loads(json.dumps(document))
            target = copy
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]
            cases.append(("json missing " + "/".join(map(str, path)), seal(json.dumps(copy))))
    bomb = json.loads(json.dumps(document))
    bomb["model"]["architecture"]["config"]["layers"][0]["config"].update(in_features=40000, out_features=40000)
    bomb["model"]["input_shape"] = [40000]
    cases.append(("memory bomb Dense(40000, 40000)", seal(json.dumps(bomb))))
    norm = json.loads(json.dumps(document))
    norm["model"]["architecture"]["config"]["layers"][1]["config"]["num_features"] = 10**10
    cases.append(("memory bomb BatchNorm1d(10**10)", seal(json.dumps(norm))))

    outcome = {"cases": len(cases), "checkpoint_error": 0, "loaded": 0, "other": [], "events": events}
    path = os.path.join(scratch, "case.bpk")
    for kind, content in cases:
        with open(path, "wb") as handle:
            handle.write(content)
        for action in ("load_checkpoint", "load_into"):
            try:
                if action == "load_checkpoint":
                    bp.load_checkpoint(path)
                else:
                    bp.load_into(model, path)
                outcome["loaded"] += 1
            except CheckpointError as error:
                outcome["checkpoint_error"] += 1
                if not str(error).strip():
                    outcome["other"].append(f"{kind}: empty CheckpointError message")
            except BaseException as error:
                outcome["other"].append(f"{kind} ({action}): {type(error).__name__}: {str(error)[:200]}")
    print(json.dumps(outcome))
''')


def small_checkpoint(path: Path) -> Path:
    model = bp.Sequential(bp.Dense(4, 3), bp.BatchNorm1d(3), bp.Dropout(0.25, seed=1), bp.Dense(3, 2), seed=0)
    optimizer = bp.optim.Adam(model.parameters(), lr=0.01)
    x = np.linspace(-1, 1, 24).reshape(6, 4)
    model.fit(x, np.ones((6, 2)), bp.losses.MeanSquaredError(), optimizer, epochs=2, verbose=0)
    return bp.save(model, path, optimizer=optimizer, extra={"epoch": 1})


def test_fuzzed_checkpoints_raise_only_checkpoint_error_in_bounded_memory(tmp_path):
    source = small_checkpoint(tmp_path / "source.bpk")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(bp.__file__).parents[1]),
                                                                os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", FUZZER, str(source), str(tmp_path), "13", "3000"],
                            capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"fuzz: {outcome['cases']} cases x 2 loaders: {outcome['checkpoint_error']} CheckpointError, "
          f"{outcome['loaded']} loaded (harmless edits), {len(outcome['other'])} other")
    assert outcome["other"] == [], outcome["other"][:20]
    assert outcome["events"] == [], outcome["events"][:20]
    assert outcome["cases"] > 3000 + source.stat().st_size
    assert outcome["checkpoint_error"] > 2 * (3000 + source.stat().st_size)  # truncations and flips all refused


# -- the cases the issue names, each with its message -------------------------------------------------------------
def reseal(path: Path, edit) -> None:
    data = path.read_bytes()
    header = struct.Struct("<8sIQI")
    magic, version, length, _ = header.unpack_from(data)
    document = json.loads(data[header.size:header.size + length])
    text = edit(document)
    encoded = (text if isinstance(text, str) else json.dumps(document)).encode()
    path.write_bytes(header.pack(magic, version, len(encoded), zlib.crc32(encoded)) + encoded
                     + data[header.size + length:])


def _set(*keys, value):
    def edit(document):
        target = document
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


def _drop(*keys):
    def edit(document):
        target = document
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return edit


NAMED = [
    ("model 5", _set("model", value=5), "model must be an object"),
    ("layers 5", _set("model", "architecture", "config", "layers", value=5), "layers"),
    ("layers []", _set("model", "architecture", "config", "layers", value=[]), "at least one layer"),
    ("seed abc", _set("model", "seed", value="abc"), "model.seed"),
    ("dtype object", _set("model", "dtype", value="object"), "model.dtype"),
    ("init os.system", _set("model", "architecture", "config", "layers", 0, "config", "init", value="os.system"),
     "unknown initialiser 'os.system'"),
    ("tensor name null", _set("tensors", 0, "name", value=None), "tensors[0].name"),
    ("crc32 Infinity", lambda d: json.dumps(d).replace('"crc32": ', '"crc32": Infinity, "x": ', 1),
     "Infinity is not a number"),
    ("betas dict", _set("optimizer", "betas", value={"b1": 0.9, "b2": 0.999}), "optimizer.betas"),
    ("nested arrays", lambda d: json.dumps(d).replace('"extra": {', '"extra": {"deep": ' + "[" * 100000
                                                      + "]" * 100000 + ", ", 1), "malformed JSON header"),
    ("no config", _drop("model", "architecture", "config"), "model.architecture"),
    ("Dense(40000, 40000)", lambda d: d["model"]["architecture"]["config"]["layers"][0]["config"].update(
        in_features=40000, out_features=40000) or d["model"].update(input_shape=[40000]), "allocation budget"),
    ("unknown layer", _set("model", "architecture", "config", "layers", 0, "type", value="os.system"),
     "unknown type 'os.system'"),
    ("negative offset", _set("tensors", 0, "offset", value=-1), "tensors[0]).offset"),
    ("object dtype", _set("tensors", 0, "dtype", value="|O"), "readable dtypes"),
    ("steps str", _set("optimizer", "steps", value="3"), "optimizer.steps"),
    ("lr negative", _set("optimizer", "lr", value=-1.0), "learning rate"),
    ("random state junk", _set("model", "random_states", "2", value={"state": 5}), "random state"),
]


@pytest.mark.parametrize("case, edit, fragment", NAMED, ids=[row[0] for row in NAMED])
def test_the_issues_hostile_headers_name_the_field(tmp_path, case, edit, fragment):
    path = small_checkpoint(tmp_path / "m.bpk")
    reseal(path, edit)
    for load in (bp.load_checkpoint,) if case == "lr negative" else (bp.load, bp.load_checkpoint):  # load: no optimiser
        with pytest.raises(CheckpointError) as excinfo:
            load(path)
        assert fragment in str(excinfo.value), str(excinfo.value)


# -- refused load_into changes nothing ---------------------------------------------------------------------------
def _state(model, optimizer):
    state = {name: value.copy() for name, value in model.state_dict().items()}
    for name, parameter in model.named_parameters():
        state.update({f"{name}/{slot}": bp.to_numpy(v).copy() for slot, v in parameter.state.items()})
    return state, optimizer.state_dict()


@pytest.mark.parametrize("damage", ["slot removed", "subset optimiser", "steps beyond", "lr str"])
def test_a_refused_load_into_changes_nothing(tmp_path, damage):
    path = small_checkpoint(tmp_path / "m.bpk")
    model = bp.Sequential(bp.Dense(4, 3), bp.BatchNorm1d(3), bp.Dropout(0.25, seed=1), bp.Dense(3, 2), seed=5)
    parameters = model.parameters()[:2] if damage == "subset optimiser" else model.parameters()
    optimizer = bp.optim.Adam(parameters, lr=0.5)
    bp.value_and_grad(model, bp.losses.MeanSquaredError(), np.ones((3, 4)), np.zeros((3, 2)))
    optimizer.step()
    if damage == "slot removed":
        reseal(path, lambda d: d.update(tensors=[t for t in d["tensors"] if t["name"] != "3.weight/state/exp_avg"]))
    elif damage == "steps beyond":
        reseal(path, lambda d: d["optimizer"].update(parameter_steps=[9] * len(d["optimizer"]["parameter_steps"])))
    elif damage == "lr str":
        reseal(path, lambda d: d["optimizer"].update(lr="fast"))
    before, optimizer_before = _state(model, optimizer)
    random_state = model.layers[2].random_state()
    with pytest.raises(CheckpointError):
        bp.load_into(model, path, optimizer)
    after, optimizer_after = _state(model, optimizer)
    assert before.keys() == after.keys() and optimizer_after == optimizer_before
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert model.layers[2].random_state() == random_state


def test_load_into_with_a_fitting_file_restores_everything(tmp_path):
    path = small_checkpoint(tmp_path / "m.bpk")
    saved = bp.load_checkpoint(path)
    model = bp.Sequential(bp.Dense(4, 3), bp.BatchNorm1d(3), bp.Dropout(0.25, seed=1), bp.Dense(3, 2), seed=5)
    optimizer = bp.optim.Adam(model.parameters(), lr=0.5)
    assert bp.load_into(model, path, optimizer) == {"epoch": 1}
    for name, value in saved.model.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value)
    assert optimizer.state_dict() == saved.optimizer.state_dict()


# -- arguments of save and load ------------------------------------------------------------------------------------
def test_save_and_load_arguments_name_the_problem(tmp_path):
    model = bp.Sequential(bp.Dense(2, 2), seed=0)
    cases = [
        (lambda: bp.save(tmp_path / "m.bpk", model), ArgumentTypeError, "the model comes first"),
        (lambda: bp.save(model, tmp_path / "m.bpk", optimizer="sgd"), ArgumentTypeError, "optimizer"),
        (lambda: bp.save(model, tmp_path / "m.bpk", extra="epoch 3"), ArgumentTypeError, "extra"),
        (lambda: bp.save(model, 5), ArgumentTypeError, "path"),
        (lambda: bp.save(model, tmp_path), CheckpointError, "is a directory"),
        (lambda: bp.load(None), ArgumentTypeError, "path"),
        (lambda: bp.load_into("model", tmp_path / "m.bpk"), ArgumentTypeError, "the model comes first"),
        (lambda: bp.load_into(42, tmp_path / "m.bpk"), ArgumentTypeError, "bp.Sequential"),
        (lambda: bp.load(tmp_path / "missing.bpk"), CheckpointError, "no checkpoint"),
    ]
    for call, kind, fragment in cases:
        with pytest.raises(kind) as excinfo:
            call()
        assert isinstance(excinfo.value, bp.errors.BackpropError) and fragment in str(excinfo.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no temporary left


# -- crash safety ---------------------------------------------------------------------------------------------------
SAVER = textwrap.dedent('''
    import sys
    import backprop as bp
    model = bp.Sequential(bp.Dense(512, 512), bp.Dense(512, 512), seed=0)
    print("ready", flush=True)
    while True:
        bp.save(model, sys.argv[1])
''')


def test_saves_killed_mid_write_leave_the_file_intact_and_no_litter(tmp_path):
    target = tmp_path / "m.bpk"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(bp.__file__).parents[1]),
                                                                os.environ.get("PYTHONPATH", "")])}
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(4):
        saver = subprocess.Popen([sys.executable, "-c", SAVER, str(target)], stdout=subprocess.PIPE, text=True,
                                 env=environment)
        assert saver.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.4)))
        saver.send_signal(signal.SIGKILL)
        saver.wait()
        kills += 1
        if target.exists():
            assert bp.load(target).state_dict()["0.weight"].shape == (512, 512)  # the previous file, intact
    model = bp.Sequential(bp.Dense(2, 2), seed=0)
    bp.save(model, target)
    assert [p.name for p in tmp_path.iterdir()] == ["m.bpk"], f"litter after {kills} kills"


def test_only_stale_temporaries_of_the_same_target_are_removed(tmp_path):
    from backprop.checkpoint import _HOST_TAG

    old = time.time() - 7200
    files = {
        ".m.bpk.0123456789ab.tmp": old,  # the format before this one, old: removed
        ".m.bpk.aaaaaaaaaaaa.tmp": None,  # the same, fresh: kept (a save in progress may own it)
        f".m.bpk.{_HOST_TAG}.{os.getpid()}.bbbbbbbbbbbb.tmp": None,  # a live process of this host: kept
        f".m.bpk.{_HOST_TAG}.999999999.cccccccccccc.tmp": None,  # a process that does not exist: removed
        ".m.bpk.0000beef.999999999.dddddddddddd.tmp": None,  # another host's: kept until it is old
        ".other.bpk.0123456789ab.tmp": old,  # another target's: kept
        ".m.bpk.notes.tmp": old,  # not named as ours: kept
    }
    for name, mtime in files.items():
        (tmp_path / name).write_bytes(b"partial")
        if mtime is not None:
            os.utime(tmp_path / name, (mtime, mtime))
    bp.save(bp.Sequential(bp.Dense(2, 2), seed=0), tmp_path / "m.bpk")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["m.bpk", ".m.bpk.aaaaaaaaaaaa.tmp", f".m.bpk.{_HOST_TAG}.{os.getpid()}.bbbbbbbbbbbb.tmp",
                           ".m.bpk.0000beef.999999999.dddddddddddd.tmp", ".other.bpk.0123456789ab.tmp",
                           ".m.bpk.notes.tmp"])
