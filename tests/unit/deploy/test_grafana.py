"""Grafana: the provisioned datasource is the one the dashboard uses; the dashboard is well-formed."""

from __future__ import annotations

import json

import yaml

from tests.unit.deploy.paths import DASHBOARDS, DEPLOY

PROVISIONING = DEPLOY / "grafana" / "provisioning"


def datasource_uids() -> set[str]:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    return {ds["uid"] for ds in doc["datasources"] if ds["type"] == "prometheus"}


def all_panels(panels: list[dict]) -> list[dict]:
    return [p for panel in panels for p in [panel, *all_panels(panel.get("panels", []))]]


def test_datasource_points_at_the_compose_prometheus() -> None:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    (ds,) = doc["datasources"]
    assert ds["url"] == "http://prometheus:9090"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert "9090:9090" in compose["services"]["prometheus"]["ports"][0]


def test_dashboards_use_the_provisioned_datasource() -> None:
    uids = datasource_uids()
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["current"]["value"] in uids
        for panel in all_panels(dash["panels"]):
            sources = [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]
            for source in filter(None, sources):
                assert source["type"] == "prometheus"
                assert source["uid"] in uids | {"${datasource}"}, f"{panel['title']}: {source}"


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        assert dash["uid"] and dash["title"]
        panels = all_panels(dash["panels"])
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids))
        cells: set[tuple[int, int]] = set()
        for panel in panels:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, panel["title"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, f"{panel['title']} overlaps another panel"
            cells |= mine
