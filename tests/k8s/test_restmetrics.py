"""client-go's rest_client_* series, measured at the kubernetes client's transport."""

from __future__ import annotations

import pytest
import urllib3
from helpers import free_port
from kubernetes import client
from prometheus_client import CollectorRegistry

from nftproxy.k8s.restmetrics import ERROR_CODE, RestMetrics, instrument, url_template


def test_the_url_label_has_no_query_and_a_templated_namespace() -> None:
    url = "https://10.0.0.1:6443/apis/events.k8s.io/v1/namespaces/kube-system/events?limit=5"
    assert (
        url_template(url)
        == "https://10.0.0.1:6443/apis/events.k8s.io/v1/namespaces/{namespace}/events"
    )
    assert url_template("http://h/api/v1/services?watch=1") == "http://h/api/v1/services"


def test_a_request_without_an_answer_is_counted_as_an_error() -> None:
    registry = CollectorRegistry()
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg.retries = False
    api = client.ApiClient(cfg)
    instrument(api, RestMetrics(registry))
    with pytest.raises(urllib3.exceptions.HTTPError):
        client.CoreV1Api(api).list_node(_request_timeout=2)
    host = cfg.host.removeprefix("http://")
    labels = {"code": ERROR_CODE, "method": "GET", "host": host}
    assert registry.get_sample_value("rest_client_requests_total", labels) == 1
    duration = {"verb": "GET", "host": host, "url": f"{cfg.host}/api/v1/nodes"}
    assert registry.get_sample_value("rest_client_request_duration_seconds_count", duration) == 1
