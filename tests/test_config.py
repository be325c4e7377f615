"""The config schema and the Serve config file: typed, strict, nothing silently ignored."""

from __future__ import annotations

import copy
import re

import pytest
from pydantic import ValidationError

from serve_app.api.errors import describe_error
from serve_app.config.live import fingerprint
from serve_app.config.schema import AppConfig, ClassifierBatching, RouterConfig, RoutingConfig
from serve_app.tools.config_check import check


def _error(data: dict, model: type = RouterConfig) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return describe_error(info.value)


def test_shipped_config_is_valid_and_complete(app_config):
    assert [r.name for r in app_config.routing.routes] == ["code", "math", "general"]
    assert app_config.routing.default_route == "general"
    assert {llm.name for llm in app_config.router.llms} == {"code", "math", "general"}


def test_serve_config_has_no_key_ray_would_ignore(serve_config):
    assert check(serve_config) == []


def test_checker_names_keys_ray_would_silently_drop(serve_config):
    bad = copy.deepcopy(serve_config)
    app = bad["applications"][0]
    app["deployments"][3]["autoscaling_config"]["target_num_ongoing_requests_per_replica"] = 2
    app["deployments"][0]["num_replica"] = 2
    problems = check(bad)
    assert any("autoscaling_config.target_num_ongoing_requests_per_replica" in p for p in problems)
    assert any("deployments[0].num_replica" in p for p in problems)


def test_ray_actor_options_in_yaml_is_refused(serve_config):
    bad = copy.deepcopy(serve_config)
    bad["applications"][0]["deployments"][3]["ray_actor_options"] = {"num_gpus": 1}
    assert any("ray_actor_options" in p for p in check(bad))


@pytest.mark.parametrize("path, key, model", [
    (("classifier",), "treshold", RouterConfig),
    (("llms", 1), "gpu", RouterConfig),
    ((), "accelerater", RouterConfig),
    ((), "routes", RouterConfig),  # the routing block is not part of args
    (("routes", 0), "exampels", RoutingConfig),
    (("routes", 0, "keywords"), "forced", RoutingConfig),
    ((), "treshold", RoutingConfig),
])
def test_unknown_keys_are_rejected_by_name(router_args, routing_args, path, key, model):
    data = copy.deepcopy(router_args if model is RouterConfig else routing_args)
    node = data
    for p in path:
        node = node[p]
    node[key] = 1
    message = _error(data, model)
    assert key in message and "Extra inputs are not permitted" in message


def _app(router_args, routing_args) -> dict:
    return {"router": copy.deepcopy(router_args), "routing": copy.deepcopy(routing_args)}


def test_route_must_name_a_known_llm(router_args, routing_args):
    app = _app(router_args, routing_args)
    app["routing"]["routes"][0]["llm"] = "nope"
    assert "names llm 'nope'" in _error(app, AppConfig)


def test_default_route_must_exist(routing_args):
    routing = copy.deepcopy(routing_args)
    routing["default_route"] = "chitchat"
    assert "default_route 'chitchat' is not a route" in _error(routing, RoutingConfig)


def test_unused_llm_and_duplicate_names_are_rejected(router_args, routing_args):
    app = _app(router_args, routing_args)
    app["router"]["llms"].append({"name": "spare", "model": "x"})
    assert "serve no route" in _error(app, AppConfig)
    routing = copy.deepcopy(routing_args)
    routing["routes"].append(copy.deepcopy(routing["routes"][0]))
    assert "two entries named 'code'" in _error(routing, RoutingConfig)


def test_auto_is_reserved_and_examples_required(routing_args):
    routing = copy.deepcopy(routing_args)
    routing["routes"][0]["name"] = "auto"
    assert "reserved" in _error(routing, RoutingConfig)
    routing = copy.deepcopy(routing_args)
    routing["routes"][0]["examples"] = []
    assert "routes.0.examples" in _error(routing, RoutingConfig)


def test_routing_version_follows_the_content(routing_args):
    routing = RoutingConfig.model_validate(routing_args)
    assert fingerprint(RoutingConfig.model_validate(copy.deepcopy(routing_args))) == fingerprint(routing)
    changed = copy.deepcopy(routing_args)
    changed["routes"][0]["threshold"] = 0.5
    assert fingerprint(RoutingConfig.model_validate(changed)) != fingerprint(routing)


def test_each_setting_has_one_home(serve_config):
    from deployments.classifier import Classifier

    app = serve_config["applications"][0]
    deployments = {d["name"]: d for d in app["deployments"]}
    # Routing (timeouts included) is the Ingress's alone; batching is the Classifier's; Serve's options are Serve's.
    ingress = deployments["Ingress"]["user_config"]
    assert "routes" in ingress and "request_timeout_s" in ingress
    assert "request_timeout_s" not in app["args"] and "max_batch_size" not in app["args"]["classifier"]
    # The shipped file has no Classifier entry: on a CPU the encoder runs in the Ingress and there is no such
    # deployment. Where there is one, a whole batch can be waiting in it.
    assert "Classifier" not in deployments
    assert Classifier.max_ongoing_requests >= ClassifierBatching().max_batch_size


def test_a_classifier_entry_needs_a_classifier_deployment(serve_config):
    config = copy.deepcopy(serve_config)
    app = config["applications"][0]
    app["deployments"].append({"name": "Classifier", "user_config": {"max_batch_size": 16}})
    assert any("deployments[" in p and "set classifier.placement: deployment" in p for p in check(config))
    app["args"]["classifier"]["placement"] = "ingress"
    assert any("there is no Classifier deployment" in p for p in check(config))
    app["args"]["classifier"]["placement"] = "deployment"
    assert check(config) == []


@pytest.mark.parametrize("where, key, value, message", [
    ("args", "request_timeout_s", 5, "request_timeout_s has moved: set it in the routing block"),
    ("classifier", "max_batch_size", 8, "max_batch_size has moved: set it in the user_config of the Classifier"),
    ("classifier", "batch_wait_timeout_s", 0, "batch_wait_timeout_s has moved: set it in the user_config"),
])
def test_a_moved_key_names_its_new_home(router_args, where, key, value, message):
    args = copy.deepcopy(router_args)
    (args if where == "args" else args["classifier"])[key] = value
    assert message in _error(args)


def test_classifier_backend_and_max_seq_length(router_args):
    shipped = RouterConfig.model_validate(router_args).classifier
    assert (shipped.backend, shipped.max_seq_length) == ("auto", 128)
    defaults = RouterConfig.model_validate({**router_args, "classifier": {}}).classifier
    assert (defaults.backend, defaults.max_seq_length) == ("auto", 128)
    for backend in ("torch", "onnx", "openvino", "auto"):
        args = copy.deepcopy(router_args)
        args["classifier"].update(backend=backend, max_seq_length=256)
        chosen = RouterConfig.model_validate(args).classifier
        assert (chosen.backend, chosen.max_seq_length) == (backend, 256)


@pytest.mark.parametrize("key, value, message", [
    ("backend", "tensorrt", "Input should be 'torch', 'onnx', 'openvino' or 'auto'"),
    ("backend", "ONNX", "Input should be 'torch', 'onnx', 'openvino' or 'auto'"),
    ("max_seq_length", 4, "greater than or equal to 8"),
    ("max_seq_length", 1024, "less than or equal to 512"),
    ("max_seq_length", "long", "valid integer"),
])
def test_classifier_backend_and_max_seq_length_are_checked(router_args, key, value, message):
    args = copy.deepcopy(router_args)
    args["classifier"][key] = value
    error = _error(args)
    assert f"classifier.{key}" in error and message in error


def test_the_classifier_refuses_the_routing_block_it_used_to_share(serve_config):
    bad = copy.deepcopy(serve_config)
    bad["applications"][0]["args"]["classifier"]["placement"] = "deployment"
    ingress = bad["applications"][0]["deployments"][0]
    bad["applications"][0]["deployments"].append({"name": "Classifier", "user_config": ingress["user_config"]})
    assert any("remove `user_config: *routing` from the Classifier" in p for p in check(bad))
    del ingress["user_config"]
    assert any("deployment Ingress has no user_config" in p for p in check(bad))


def test_checker_reports_bad_args_and_bad_routing_together(serve_config):
    bad = copy.deepcopy(serve_config)
    bad["applications"][0]["args"]["llms"][0]["gpu"] = 1
    bad["applications"][0]["deployments"][0]["user_config"]["routes"][1]["exampels"] = []
    [problem] = check(bad)
    assert "args: llms.0.gpu: Extra inputs are not permitted" in problem
    assert "user_config (the routing block): routes.1.exampels: Extra inputs are not permitted" in problem


def test_engine_args_cannot_override_the_model(router_args):
    args = copy.deepcopy(router_args)
    args["llms"][0]["engine_args"] = {"model": "other"}
    assert "may not set ['model']" in _error(args)


def test_a_new_category_is_configuration_only(router_args, routing_args):
    app = _app(router_args, routing_args)
    app["routing"]["routes"].append({"name": "creative", "llm": "general", "examples": ["Write a sonnet about rain"]})
    assert AppConfig.model_validate(app).routing.route("creative").llm == "general"


def test_kvcached_block_is_strict(router_args):
    args = copy.deepcopy(router_args)
    args["kvcached"]["enabeld"] = True
    assert "kvcached.enabeld: Extra inputs are not permitted" in _error(args)
    args = copy.deepcopy(router_args)
    args["kvcached"]["gpu_utilization"] = 1.5
    assert "kvcached.gpu_utilization" in _error(args)


@pytest.mark.parametrize("env, message", [
    ({"HF_TOKEN": "x"}, "KVCACHED_* variables only"),
    ({"KVCACHED_IPC_NAME": "shared"}, "may not set ['KVCACHED_IPC_NAME']"),
    ({"KVCACHED_GPU_UTILIZATION": "0.5"}, "may not set ['KVCACHED_GPU_UTILIZATION']"),
])
def test_kvcached_env_takes_only_the_other_kvcached_variables(router_args, env, message):
    args = copy.deepcopy(router_args)
    args["kvcached"]["env"] = env
    assert message in _error(args)
    args["kvcached"]["env"] = {"KVCACHED_LOG_LEVEL": "DEBUG"}
    assert RouterConfig.model_validate(args).kvcached.env == {"KVCACHED_LOG_LEVEL": "DEBUG"}


def test_one_kv_cache_cap_per_llm(router_args):
    args = copy.deepcopy(router_args)
    args["llms"][0]["kv_cache_gib"] = 4
    args["llms"][0]["engine_args"] = {"kv_cache_memory_bytes": 1 << 30}
    assert "set kv_cache_gib or engine_args.kv_cache_memory_bytes, not both" in _error(args)


@pytest.mark.parametrize("entry, message", [
    ({"engine_args": {"tool_call_parser": "hermes"}}, "engine_args may not set ['tool_call_parser']: set tool_calling"),
    ({"engine_args": {"chat_template": "x.jinja", "enable_auto_tool_choice": True}},
     "may not set ['chat_template', 'enable_auto_tool_choice']"),
    ({"tool_calling": {"parser": ""}}, "tool_calling.parser"),
    ({"tool_calling": {"parser": "hermes", "template": "x"}}, "tool_calling.template"),
])
def test_tool_calling_has_one_home(router_args, entry, message):
    args = copy.deepcopy(router_args)
    args["llms"][0].update(entry)
    with pytest.raises(ValidationError, match=re.escape(message)):
        RouterConfig.model_validate(args)
    cpu = copy.deepcopy(router_args)
    cpu["cpu_fallback"]["engine_args"] = {"tool_call_parser": "hermes"}
    with pytest.raises(ValidationError, match=re.escape("set tool_calling")):
        RouterConfig.model_validate(cpu)


@pytest.mark.parametrize("entry, message", [
    ({"endpoint": "http://127.0.0.1:9100/v1", "model": "m", "num_gpus": 0.5},
     "has an endpoint, so no engine runs in the cluster for it: remove ['num_gpus']"),
    ({"endpoint": "http://127.0.0.1:9100/v1", "model": "m", "engine_args": {}, "tool_calling": {"parser": "hermes"}},
     "remove ['engine_args', 'tool_calling']"),
    ({"model": "m", "api_key_env": "KEY"}, "sets api_key_env without an endpoint"),
    ({"endpoint": "127.0.0.1:9100/v1", "model": "m"}, "endpoint"),
    ({"endpoint": "http://127.0.0.1:9100/v1", "model": "m", "api_key_env": "sk-abc123-not-a-name"}, "api_key_env"),
    ({"endpoint": "http://127.0.0.1:9100/v1", "model": "m", "api_key": "sk-1"}, "api_key"),  # never the key itself
])
def test_external_entries_are_checked(router_args, entry, message):
    args = copy.deepcopy(router_args)
    args["llms"].append({"name": "hosted", **entry})
    with pytest.raises(ValidationError, match=re.escape(message)):
        RouterConfig.model_validate(args)


def test_a_mixture_of_in_cluster_and_external_llms_is_valid(router_args):
    args = copy.deepcopy(router_args)
    args["llms"][0] = {"name": "code", "endpoint": "https://api.example.com/v1", "model": "coder-large",
                       "api_key_env": "CODER_KEY"}
    config = RouterConfig.model_validate(args)
    assert config.llms[0].external and not config.llms[1].external


@pytest.mark.parametrize("thread, message", [
    ({"switch_margn": 0.2}, "thread.switch_margn"),
    ({"switch": ["(unclosed"]}, "'(unclosed' is not a valid regular expression"),
    ({"strip": ["  "]}, "patterns may not be blank"),
    ({"follow_up": ["ok", " "]}, "follow_up examples may not be blank"),
    ({"switch_margin": -0.1}, "greater than or equal to 0"),
])
def test_the_thread_block_is_checked(routing_args, thread, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        RoutingConfig.model_validate({**routing_args, "thread": {**routing_args["thread"], **thread}})
