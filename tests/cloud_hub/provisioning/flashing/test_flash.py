"""`edgepilot flash` through the real CLI on real card images, read back with mtools and checked
with fsck.vfat: what it writes, that it is idempotent, what it refuses, and that a failed write
leaves the input image as it was."""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from cloud_hub.provisioning.flashing.firstboot import FIRSTRUN_ARGS
from cloud_hub.provisioning.flashing.partitions import (
    ImageError,
    find_boot_partition,
    read_partitions,
)
from tests.cloud_hub.provisioning.flashing.conftest import (
    PSK,
    SSH_KEY,
    TOKEN,
    ImageFactory,
    wpa_psk,
)
from tests.cloud_hub.provisioning.flashing.images import (
    BASIC_DATA,
    BOOT_OFFSET,
    CMDLINE,
    fsck_boot,
    make_image,
    names,
    read,
    sha256,
)
from tests.conftest import run_cli

HUB = "http://hub.example:8000"


def flash(env: dict[str, str], image: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli(["flash", str(image), "--hub", HUB, *[str(a) for a in args]], env)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text and PSK not in text


# -- the partition table ---------------------------------------------------------------------
def test_partitions_of_mbr_and_gpt_images(image: ImageFactory) -> None:
    mbr = read_partitions(image("bookworm"))
    assert [(p.scheme, p.kind, p.offset) for p in mbr] == [
        ("mbr", "0x0c FAT32 (LBA)", BOOT_OFFSET),
        ("mbr", "0x83 Linux", BOOT_OFFSET + 64 * 2**20),
    ]
    boot, parts = find_boot_partition(image("gpt"))
    assert (boot.scheme, boot.kind, boot.offset, boot.size) == (
        "gpt",
        "EFI system",
        BOOT_OFFSET,
        64 * 2**20,
    )
    assert [p.kind for p in parts] == ["EFI system", "Linux filesystem"]


def test_partition_types_and_contents_both_count(tmp_path: Path) -> None:
    fat16 = make_image(tmp_path / "fat16.img", boot_type="e", fat_bits=16)
    assert find_boot_partition(fat16)[0].kind == "0x0e FAT16 (LBA)"
    basic = make_image(tmp_path / "basic.img", scheme="gpt", boot_type=BASIC_DATA)
    assert find_boot_partition(basic)[0].kind == "Microsoft basic data"
    # A FAT partition type with no FAT inside (NTFS, exFAT, nothing) is not the boot partition.
    empty = make_image(tmp_path / "empty.img", scheme="gpt", fat=False, boot_type=BASIC_DATA)
    with pytest.raises(ImageError, match="Microsoft basic data.*Linux filesystem"):
        find_boot_partition(empty)


# -- Bookworm: firstrun.sh -------------------------------------------------------------------
def test_flash_bookworm_writes_agent_and_firstrun(
    image: ImageFactory, secrets: dict[str, Path], cli_env: dict[str, str], tmp_path: Path
) -> None:
    src = image("bookworm")
    before = sha256(src)
    out = tmp_path / "flashed.img"
    res = flash(
        cli_env, src, "--token-file", secrets["token"], "--out", out,
        "--hostname-prefix", "cam", "--wifi-ssid", "Shop Floor", "--wifi-psk-file",
        secrets["psk"], "--wifi-country", "gb", "--ssh-key", secrets["ssh"], "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert_no_secret(res.stdout, res.stderr)
    doc = json.loads(res.stdout)
    assert doc["first_boot"] == "firstrun"
    assert doc["partition"] == {
        "number": 1,
        "scheme": "mbr",
        "type": "0x0c FAT32 (LBA)",
        "offset": BOOT_OFFSET,
        "size": 64 * 2**20,
    }
    assert doc["token"] == {"source": "file", "prefix": TOKEN[:11], "fleet": None}
    assert sha256(src) == before  # the input is only read

    assert {"agent.toml", "enroll-token", "install.sh", "setup.sh"} <= names(out, "/edgepilot")
    assert "firstrun.sh" in names(out)
    assert read(out, "edgepilot/enroll-token").decode().strip() == TOKEN
    agent = tomllib.loads(read(out, "edgepilot/agent.toml").decode())
    assert agent["data_dir"] == "/var/lib/edgepilot"
    assert agent["enroll"] == {"hub": HUB, "token_file": "/etc/edgepilot/enroll-token"}
    cmdline = read(out, "cmdline.txt").decode()
    assert (
        cmdline
        == CMDLINE.strip() + " cfg80211.ieee80211_regdom=GB " + " ".join(FIRSTRUN_ARGS) + "\n"
    )
    script = read(out, "firstrun.sh").decode()
    assert script.startswith("#!/bin/bash") and "MECHANISM=firstrun" in script
    assert "HOSTNAME_PREFIX=cam" in script and SSH_KEY in script
    # The Wi-Fi key as WPA derives it (not the passphrase), until first boot removes it.
    assert "ssid=Shop Floor" in script and f"psk={wpa_psk('Shop Floor')}" in script
    assert PSK not in script
    fsck_boot(out, tmp_path)


def test_flash_twice_gives_the_same_image(
    image: ImageFactory, secrets: dict[str, Path], cli_env: dict[str, str], tmp_path: Path
) -> None:
    args = ("--token-file", secrets["token"], "--wifi-ssid", "net", "--wifi-psk-file",
            secrets["psk"], "--wifi-country", "DE", "--ssh-key", secrets["ssh"])  # fmt: skip
    src = image("bookworm")
    one, two = tmp_path / "one.img", tmp_path / "two.img"
    for out in (one, two):
        res = flash(cli_env, src, *args, "--out", out)
        assert res.returncode == 0, res.stderr
    assert sha256(one) == sha256(two)  # the same input, flashed twice
    again = flash(cli_env, one, *args, "--json")  # in place, on a flashed image
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["written"] == []
    assert sha256(one) == sha256(two)
    cmdline = read(one, "cmdline.txt").decode()
    assert cmdline.count("systemd.run=") == 1 and cmdline.count("ieee80211_regdom") == 1
    fsck_boot(one, tmp_path)


def test_flash_in_place_by_default(
    image: ImageFactory, secrets: dict[str, Path], cli_env: dict[str, str]
) -> None:
    src = image("bookworm")
    res = flash(cli_env, src, "--token-file", secrets["token"])
    assert res.returncode == 0, res.stderr
    assert "firstrun.sh" in names(src)
    assert "Flashed" in res.stdout and "firstrun.sh (Bookworm)" in res.stdout
    assert_no_secret(res.stdout, res.stderr)
    assert sorted(p.name for p in src.parent.iterdir() if p.name.endswith(".flash")) == []


# -- Trixie and Jetson layouts: cloud-init, GPT ------------------------------------------------
def test_flash_trixie_cloud_init(
    image: ImageFactory, secrets: dict[str, Path], cli_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "trixie-flashed.img"
    res = flash(
        cli_env, image("trixie"), "--token-file", secrets["token"], "--out", out,
        "--wifi-ssid", 'Café "5G"', "--wifi-psk-file", secrets["psk"], "--wifi-country", "FR",
        "--ssh-key", secrets["ssh"], "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["first_boot"] == "cloud-init"
    user_data_text = read(out, "user-data").decode()
    assert user_data_text.startswith("#cloud-config\n")
    user_data = yaml.safe_load(user_data_text)
    assert user_data["ssh_authorized_keys"] == [SSH_KEY]
    assert user_data["runcmd"] == [["bash", "/boot/firmware/edgepilot/firstboot.sh"]]
    assert "firstboot.sh" in names(out, "/edgepilot")
    network = yaml.safe_load(read(out, "network-config"))["network"]
    assert network["version"] == 2
    wlan = network["wifis"]["wlan0"]
    assert wlan["access-points"] == {'Café "5G"': {"password": wpa_psk('Café "5G"')}}
    assert wlan["regulatory-domain"] == "FR"
    meta = yaml.safe_load(read(out, "meta-data"))
    assert meta["instance-id"].startswith("edgepilot-")
    assert "firstrun.sh" not in names(out)
    assert "systemd.run" not in read(out, "cmdline.txt").decode()
    fsck_boot(out, tmp_path)


def test_flash_gpt_image(
    image: ImageFactory, secrets: dict[str, Path], cli_env: dict[str, str], tmp_path: Path
) -> None:
    src = image("gpt")
    res = flash(cli_env, src, "--token-file", secrets["token"], "--first-boot", "cloud-init")
    assert res.returncode == 0, res.stderr
    assert {"user-data", "meta-data"} <= names(src)
    assert "network-config" not in names(src)  # no Wi-Fi given: the image's network stays
    assert read(src, "edgepilot/enroll-token").decode().strip() == TOKEN
    fsck_boot(src, tmp_path)


# -- compressed images -----------------------------------------------------------------------
def test_flash_decompresses_xz_and_gz(
    image: ImageFactory, secrets: dict[str, Path], cli_env: dict[str, str], tmp_path: Path
) -> None:
    raw = image("bookworm")
    xz = tmp_path / "os.img.xz"
    gz = tmp_path / "os.img.gz"
    with raw.open("rb") as f, lzma.open(xz, "wb", preset=0) as z:
        shutil.copyfileobj(f, z)
    with raw.open("rb") as f, gzip.open(gz, "wb", compresslevel=1) as g:
        shutil.copyfileobj(f, g)
    xz_before = sha256(xz)
    res = flash(cli_env, xz, "--token-file", secrets["token"], "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["decompressed"] == "xz" and doc["image"] == str(tmp_path / "os.img")
    assert sha256(xz) == xz_before
    from_gz = tmp_path / "from-gz.img"
    res = flash(cli_env, gz, "--token-file", secrets["token"], "--out", from_gz)
    assert res.returncode == 0, res.stderr
    assert sha256(from_gz) == sha256(tmp_path / "os.img")
    fsck_boot(from_gz, tmp_path)


def test_flash_refuses_unreadable_compression(
    image: ImageFactory, secrets: dict[str, Path], cli_env: dict[str, str], tmp_path: Path
) -> None:
    zst = tmp_path / "os.img.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(1000))
    res = flash(cli_env, zst, "--token-file", secrets["token"], "--out", tmp_path / "o.img")
    assert res.returncode == 2
    assert "compressed with zstd" in res.stderr and "unzstd" in res.stderr
    broken = tmp_path / "broken.img.xz"
    broken.write_bytes(lzma.compress(bytes(4096))[:30])
    res = flash(cli_env, broken, "--token-file", secrets["token"])
    assert res.returncode == 2 and "cannot decompress" in res.stderr
    assert not (tmp_path / "o.img").exists() and not (tmp_path / "broken.img").exists()


# -- refusals --------------------------------------------------------------------------------
def test_flash_refusals(
    image: ImageFactory, secrets: dict[str, Path], cli_env: dict[str, str], tmp_path: Path
) -> None:
    src = image("bookworm")
    before = sha256(src)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    tok = ("--token-file", secrets["token"])
    cases = [
        ((*tok, "--wifi-ssid", "net", "--wifi-country", "GB"), "--wifi-ssid needs --wifi-psk-file"),
        ((*tok, "--wifi-ssid", "n", "--wifi-psk-file", tmp_path / "nope", "--wifi-country",
          "GB"), "no such file"),
        ((*tok, "--wifi-ssid", "n", "--wifi-psk-file", empty, "--wifi-country", "GB"),
         "the file is empty"),
        ((*tok, "--wifi-ssid", "n", "--wifi-psk-file", secrets["psk"]), "--wifi-country"),
        ((*tok, "--ssh-key", tmp_path / "missing.pub"), "--ssh-key"),
        ((*tok, "--ssh-key", secrets["token"]), "not an OpenSSH public key"),
        ((*tok, "--out", tmp_path / "no-such-dir" / "x.img"), "does not exist"),
        ((*tok, "--hostname-prefix", "Bad_Name"), "--hostname-prefix"),
        (("--max-uses", "2"), "give --fleet"),
        ((*tok, "--hub", "ftp://x"), "--hub"),
    ]  # fmt: skip
    for args, message in cases:
        res = flash(cli_env, src, *args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert message in res.stderr, (args, res.stderr)
        assert_no_secret(res.stdout, res.stderr)
    short = tmp_path / "short"
    short.write_text("1234567\n")
    res = flash(cli_env, src, *tok, "--wifi-ssid", "n", "--wifi-psk-file", short,
                "--wifi-country", "GB")  # fmt: skip
    assert res.returncode == 2 and "8 to 63" in res.stderr and "1234567" not in res.stderr
    assert sha256(src) == before


def test_flash_refuses_an_image_without_fat(
    image: ImageFactory, secrets: dict[str, Path], cli_env: dict[str, str], tmp_path: Path
) -> None:
    for kind in ("nofat",):
        res = flash(cli_env, image(kind), "--token-file", secrets["token"])
        assert res.returncode == 2
        assert "no FAT boot partition" in res.stderr and "0x83 Linux" in res.stderr
    not_an_image = tmp_path / "notes.img"
    not_an_image.write_bytes(b"hello" * 200)
    res = flash(cli_env, not_an_image, "--token-file", secrets["token"])
    assert res.returncode == 2 and "no partition table" in res.stderr


def test_failed_write_leaves_the_input_unchanged(
    image: ImageFactory, secrets: dict[str, Path], cli_env: dict[str, str], tmp_path: Path
) -> None:
    src = image("bookworm")
    # Fill the boot partition but for 2 KiB: flash cannot write its files there.
    drive = f"{src}@@{BOOT_OFFSET}"
    env = {**cli_env, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(["mdir", "-i", drive, "::/"], env=env, capture_output=True, text=True)
    free = int(listing.stdout.strip().splitlines()[-1].split("bytes free")[0].replace(" ", ""))
    filler = tmp_path / "filler"
    with filler.open("wb") as f:
        f.truncate(free - 2048)
    subprocess.run(["mcopy", "-i", drive, str(filler), "::/filler"], env=env, check=True)
    before = sha256(src)
    res = flash(cli_env, src, "--token-file", secrets["token"])
    assert res.returncode == 2, res.stderr
    assert "writing" in res.stderr and "failed" in res.stderr
    assert sha256(src) == before
    assert [p.name for p in src.parent.iterdir() if p.name.endswith(".flash")] == []
    assert "firstrun.sh" not in names(src)
    # A token made for an image that could not be written is revoked at once.
    assert run_cli(["fleets", "create", "shop"], cli_env).returncode == 0
    res = flash(cli_env, src, "--fleet", "shop")
    assert res.returncode == 2 and sha256(src) == before
    listed = json.loads(run_cli(["enroll-tokens", "list", "--json"], cli_env).stdout)
    assert [t["state"] for t in listed] == ["revoked"]


def test_make_image_helper_is_a_real_raspberry_pi_layout(tmp_path: Path) -> None:
    img = make_image(tmp_path / "x.img")
    assert names(img) == {"cmdline.txt", "config.txt"}
    fsck_boot(img, tmp_path)


# -- a new enrollment token for the fleet ----------------------------------------------------
def test_flash_makes_a_fleet_token(
    image: ImageFactory, cli_env: dict[str, str], tmp_path: Path
) -> None:
    assert run_cli(["fleets", "create", "shop"], cli_env).returncode == 0
    src = image("bookworm")
    res = flash(cli_env, src, "--fleet", "shop", "--max-uses", "3", "--expires", "2d", "--json")
    assert res.returncode == 0, res.stderr
    token = json.loads(res.stdout)["token"]
    assert token["source"] == "created" and token["fleet"] == "shop"
    assert token["max_uses"] == 3
    secret = read(src, "edgepilot/enroll-token").decode().strip()
    assert secret.startswith("ept_") and secret.startswith(token["prefix"])
    assert secret not in res.stdout + res.stderr  # shown nowhere: it is on the card only
    listed = json.loads(run_cli(["enroll-tokens", "list", "--json"], cli_env).stdout)
    assert [(t["id"], t["state"]) for t in listed] == [(token["id"], "live")]

    table = flash(cli_env, image("bookworm", "second.img"), "--fleet", "shop")
    assert table.returncode == 0, table.stderr
    assert "for fleet shop, expires" in table.stdout and "ept_" in table.stdout
    assert read(tmp_path / "second.img", "edgepilot/enroll-token").decode().strip() not in (
        table.stdout + table.stderr
    )


def test_flash_with_fleet_refusals_make_no_token(
    image: ImageFactory, cli_env: dict[str, str]
) -> None:
    res = flash(cli_env, image("bookworm"), "--fleet", "nope")
    assert res.returncode == 2 and "nope" in res.stderr and "not found" in res.stderr
    assert run_cli(["fleets", "create", "shop"], cli_env).returncode == 0
    res = flash(cli_env, image("nofat"), "--fleet", "shop")
    assert res.returncode == 2 and "no FAT boot partition" in res.stderr
    res = flash(cli_env, image("bookworm"), "--fleet", "shop", "--expires", "soon")
    assert res.returncode == 2 and "not a duration" in res.stderr
    listed = json.loads(run_cli(["enroll-tokens", "list", "--json"], cli_env).stdout)
    assert listed == []


def test_flash_without_mtools_says_how_to_install_it(
    image: ImageFactory, secrets: dict[str, Path], cli_env: dict[str, str]
) -> None:
    src = image("bookworm")
    before = sha256(src)
    env = {**cli_env, "PATH": str(Path(cli_env["PATH"].split(":")[0]))}  # the venv's bin only
    res = flash(env, src, "--token-file", secrets["token"])
    assert res.returncode == 2
    assert "mtools is not installed" in res.stderr
    assert "apt-get install mtools" in res.stderr and "brew install mtools" in res.stderr
    assert sha256(src) == before
