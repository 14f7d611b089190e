"""Ward CSV import: Unicode names end to end, all-or-nothing on bad input."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from collector import cli, db, wards
from collector.service import Service

from .conftest import UNITS


def names(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(db.wards.c.id, db.wards.c.name)).all())


def test_unicode_names_round_trip_through_db_api_metrics_and_status(
    service: Service,
    client: TestClient,
    db_url: str,
    profile_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stored = names(service.engine)
    assert stored["ward-ben-thanh"] == "Phường Bến Thành"
    assert stored["commune-can-gio"] == "Xã Cần Giờ"

    listed = {w["id"]: w for w in client.get("/api/v1/wards").json()}
    assert listed["ward-ben-thanh"]["name"] == "Phường Bến Thành"
    assert listed["commune-can-gio"]["former_district"] == "Huyện Cần Giờ"
    detail = client.get("/api/v1/wards/commune-can-gio").json()
    assert detail["name"] == "Xã Cần Giờ"

    text = client.get("/metrics").content.decode("utf-8")
    ready = next(
        f for f in text_string_to_metric_families(text) if f.name == "wardready_ward_ready"
    )
    shown = {s.labels["ward"]: s.labels["ward_name"] for s in ready.samples}
    assert shown["ward-ben-thanh"] == "Phường Bến Thành"
    assert shown["commune-can-gio"] == "Xã Cần Giờ"

    assert cli.main(["--db", db_url, "--profile", str(profile_path), "status"]) == 0
    out = capsys.readouterr().out
    assert "Phường Bến Thành" in out and "Xã Cần Giờ" in out


def test_bom_is_accepted_and_header_is_recognised(engine: sa.Engine, units_csv: Path) -> None:
    assert units_csv.read_bytes().startswith(b"\xef\xbb\xbf")
    assert wards.import_csv(engine, units_csv) == (4, 0)
    assert set(names(engine)) == {
        "ward-ben-thanh",
        "commune-can-gio",
        "ward-minh-phung",
        "ward-binh-thoi",
    }


def test_decomposed_names_are_stored_precomposed(engine: sa.Engine, tmp_path: Path) -> None:
    nfd = unicodedata.normalize("NFD", "Phường Bến Thành")
    assert nfd != "Phường Bến Thành"
    path = tmp_path / "nfd.csv"
    path.write_text(f"id,name,kind,former_district,working_group\nw-1,{nfd},ward,,1\n", "utf-8")
    wards.import_csv(engine, path)
    assert names(engine)["w-1"] == "Phường Bến Thành"


def test_reimport_updates_in_place(engine: sa.Engine, units_csv: Path, tmp_path: Path) -> None:
    wards.import_csv(engine, units_csv)
    changed = tmp_path / "changed.csv"
    changed.write_text(
        UNITS.replace("Xã Cần Giờ", "Xã Thạnh An") + "ward-new,Phường Mới,ward,,3\n", "utf-8"
    )
    assert wards.import_csv(engine, changed) == (1, 4)
    got = names(engine)
    assert got["commune-can-gio"] == "Xã Thạnh An" and got["ward-new"] == "Phường Mới"
    assert len(got) == 5


BAD_LINES = [
    ("Bad Id,Phường X,ward,,1\n", "units.csv:3: id: 'Bad Id' is not a valid ward id"),
    ("ward-x,,ward,,1\n", "units.csv:3: name: must not be empty"),
    ("ward-x,Phường X,ward,,\n", "units.csv:3: working_group: must not be empty"),
    ("ward-x,Phường X,ward\n", "units.csv:3: fewer fields than the header's 5"),
    ("ward-x,Phường X,ward,,1,extra\n", "units.csv:3: more fields than the header's 5"),
    (
        "ward-ben-thanh,Again,ward,,1\n",
        "units.csv:3: id: 'ward-ben-thanh' already appears on line 2",
    ),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_bad_line_names_file_line_field_and_imports_nothing(
    engine: sa.Engine, tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "units.csv"
    path.write_text(
        "id,name,kind,former_district,working_group\n"
        "ward-ben-thanh,Phường Bến Thành,ward,,2\n" + line + "ward-z,Phường Z,ward,,9\n",
        "utf-8",
    )
    with pytest.raises(wards.WardImportError) as err:
        wards.import_csv(engine, path)
    assert any(m.endswith(message) or message in m for m in err.value.messages), err.value.messages
    assert names(engine) == {}


def test_cli_import_reports_every_bad_line_and_exits_2(
    db_url: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "units.csv"
    lines = ["id,name,kind,former_district,working_group"]
    lines += [f"ward-{i},Phường {i},ward,,1" for i in range(5)]
    lines += ["Bad Id,Phường Sai,ward,,1", "ward-ok,Phường Đúng,ward,,"]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    assert cli.main(["--db", db_url, "wards", "import", str(path)]) == 2
    err = capsys.readouterr().err
    assert "units.csv:7: id: 'Bad Id' is not a valid ward id" in err
    assert "units.csv:8: working_group: must not be empty" in err
    assert "nothing imported" in err
    assert names(engine) == {}


def test_missing_column_and_wrong_encoding_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "units.csv"
    path.write_text("id,name,kind,former_district\nw,W,ward,\n", "utf-8")
    with pytest.raises(
        wards.WardImportError, match=r"units.csv:1: header: missing column\(s\) working_group"
    ):
        wards.read_csv(path)
    path.write_bytes(
        "id,name,kind,former_district,working_group\nw,Bình,ward,,1\n".encode("latin-1")
    )
    with pytest.raises(wards.WardImportError, match=r"units.csv:2: not UTF-8 text"):
        wards.read_csv(path)
    path.write_text("id,name,kind,former_district,working_group\n", "utf-8")
    with pytest.raises(wards.WardImportError, match="no wards"):
        wards.read_csv(path)


def test_pilot_list_imports(engine: sa.Engine) -> None:
    pilot = Path(__file__).resolve().parents[2] / "data" / "hcmc_pilot_units.csv"
    added, updated = wards.import_csv(engine, pilot)
    assert added == len(pilot.read_text("utf-8").splitlines()) - 1 and updated == 0
    assert names(engine)["ward-minh-phung"]
