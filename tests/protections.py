"""The product's protections, each with the code that provides it, a way to switch it off, and the
tests that must then fail. tests/attacks/test_protections.py switches each one off in a copy of the
source tree and runs its tests there: a protection no test notices is not protected.

When the code of a protection moves, its `find` text stops matching and that test says so: update
the entry here (never delete one without putting its protection somewhere else)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protection:
    name: str
    #: path under src/agent_vault
    file: str
    #: the code that protects (must occur exactly once in `file`)
    find: str
    #: the same code with the protection switched off
    disabled: str
    #: pytest node ids or files that must fail once it is off
    tests: tuple[str, ...]


PROTECTIONS: tuple[Protection, ...] = (
    Protection(
        "a host name we do not serve gets 421 (DNS rebinding)",
        "web/hardening.py",
        "return host is not None and host.lower() in self.allowed",
        "return True",
        ("tests/test_web_hardening.py::test_dns_rebinding_host_gets_421_on_every_route",),
    ),
    Protection(
        "state changes need the synchronizer token bound to the browser and the request",
        "web/csrf.py",
        "return hmac.compare_digest(self.token(cookie, purpose), token)",
        "return True",
        ("tests/test_web_attacks.py::test_a_token_from_another_browser_or_request_is_refused",),
    ),
    Protection(
        "a cross-site form post is refused (Origin, Sec-Fetch-Site)",
        "web/hardening.py",
        '    site = request.headers.get("sec-fetch-site")\n',
        "    return True\n",
        ("tests/test_web_attacks.py::test_cross_site_form_post_is_refused",),
    ),
    Protection(
        "pages cannot be framed and carry the security headers",
        "web/hardening.py",
        '"x-frame-options": "DENY",',
        "",
        ("tests/test_web_hardening.py::test_approval_page_forbids_framing",),
    ),
    Protection(
        "approving needs the approver's proof",
        "broker/core.py",
        "factor = self.approver.verify(req, proof)",
        'factor = "none"',
        ("tests/test_broker.py::test_approve_then_deliver_once",),
    ),
    Protection(
        "a value goes only to the session that asked",
        "broker/core.py",
        "if req is None or not secrets.compare_digest(req.requester.session_id, session.id):",
        "if req is None:",
        ("tests/test_broker.py::test_value_goes_only_to_the_session_that_asked",),
    ),
    Protection(
        "values are handed over once",
        "broker/core.py",
        "        if not self.store.transition(req.id, [Status.APPROVED], Status.DELIVERED):\n"
        '            raise InvalidRequest(f"the values of request {req.id} were already delivered',
        "        if not (self.store.transition(req.id, [Status.APPROVED], Status.DELIVERED) or True):\n"
        '            raise InvalidRequest(f"the values of request {req.id} were already delivered',
        ("tests/attacks/test_double_delivery.py",),
    ),
    Protection(
        "the audit row is written before a value is released",
        "broker/core.py",
        'await self._audit(ws, "delivered", req, names=req.all_names, window_end=end)',
        "pass",
        ("tests/test_broker.py::test_audit_failure_releases_nothing",),
    ),
    Protection(
        "a request expires; approving after that releases nothing",
        "broker/core.py",
        "return self.clock() >= req.expires_at or",
        "return False and",
        ("tests/test_broker.py::test_request_expires_and_cannot_be_approved_after",),
    ),
    Protection(
        "a request expires by the monotonic clock too (a clock set back does not revive it)",
        "broker/core.py",
        "or (live is not None and time.monotonic() >= live.deadline)",
        "or False",
        ("tests/attacks/test_window_action.py::test_setting_the_clock_back_does_not_revive_an_expired_request",),
    ),
    Protection(
        "a window lets through only the action it was opened for (read, or one command)",
        "store/sqlite.py",
        'return self.action == action and (action != "run" or self.subject == subject)',
        "return True",
        ("tests/attacks/test_window_action.py::test_approving_a_command_opens_no_read",),
    ),
    Protection(
        "a window is bound to the vault's definition when it opened",
        "broker/windows.py",
        "if w.definition == definition and w.allows(action, subject)",
        "if w.allows(action, subject)",
        ("tests/test_vault_definition.py::test_a_window_does_not_follow_the_vault_to_another_store",),
    ),
    Protection(
        "delivery (value or inject) is part of a vault's definition",
        "broker/workspace.py",
        '"delivery": vault.delivery,',
        "",
        ("tests/attacks/test_window_action.py::test_deleting_inject_delivery_closes_the_vaults_windows",),
    ),
    Protection(
        "a window ends by the monotonic clock too",
        "broker/windows.py",
        "return time.monotonic() < deadline",
        "return True",
        ("tests/attacks/test_window_action.py::test_setting_the_clock_back_does_not_reopen_a_window",),
    ),
    Protection(
        "a broker whose clock went back ignores older windows",
        "broker/windows.py",
        "return self._high_water is None or now + CLOCK_SLACK >= self._high_water",
        "return True",
        ("tests/attacks/test_window_action.py::test_a_restarted_broker_with_its_clock_set_back_ignores_older_windows",),
    ),
    Protection(
        "an approved read is not delivered from a vault the config has since re-pointed",
        "broker/core.py",
        "    async def _refuse_if_vault_changed(self, ws: Workspace, req: AccessRequest) -> None:\n",
        "    async def _refuse_if_vault_changed(self, ws: Workspace, req: AccessRequest) -> None:\n        return\n",
        ("tests/test_vault_definition.py",),
    ),
    Protection(
        "agent-written text is shown with hidden characters made visible",
        "domain/untrusted.py",
        'return cat in ("Cc", "Cf", "Zl", "Zp", "Co", "Cs") or (cat == "Zs" and ch != " ")',
        "return False",
        ("tests/test_web_attacks.py::test_agent_text_is_inert_and_visibly_escaped",),
    ),
    Protection(
        "reasons have a size cap",
        "domain/grammar.py",
        "if len(reason) > MAX_REASON:",
        "if False:",
        ("tests/test_broker.py::test_bad_names_rejected_before_any_provider_call",),
    ),
    Protection(
        "a broker starts with a fixed environment, never the front door's (LD_PRELOAD, FAKETIME, PYTHONPATH)",
        "frontdoor/launcher.py",
        "env = broker_environment(paths)",
        'env = dict(sys.modules["os"].environ, AGENT_VAULT_HOME=str(paths.root))',
        (
            "tests/attacks/test_broker_environment.py::test_the_broker_gets_none_of_the_front_doors_poisoned_environment",
        ),
    ),
    Protection(
        "audit verify names a back-dated row, even with a rebuilt chain",
        "store/audit.py",
        "problem = _check_row(row, expected, prev_hash) or _check_time(row, prev_ts)",
        "problem = _check_row(row, expected, prev_hash)",
        ("tests/attacks/test_broker_environment.py::test_a_back_dated_row_with_a_rebuilt_chain_fails_verify",),
    ),
    Protection(
        "a front door on another state home says so and records it in the default home's audit log",
        "frontdoor/session.py",
        "self.home_notice.start(info.name, info.version)",
        "None",
        ("tests/attacks/test_other_home.py::test_another_home_is_announced_recorded_and_flagged",),
    ),
    Protection(
        "doctor lists the state homes front doors recorded",
        "frontdoor/home_use.py",
        "for home, days in counts.items():",
        "for home, days in {}.items():",
        ("tests/attacks/test_other_home.py::test_another_home_is_announced_recorded_and_flagged",),
    ),
    Protection(
        "doctor lists the homes of running brokers",
        "frontdoor/home_use.py",
        'found.setdefault(home, []).append(f"broker pid {pid} running")',
        "pass",
        ("tests/attacks/test_other_home.py::test_another_home_is_announced_recorded_and_flagged",),
    ),
    Protection(
        "status names a state home that is not the default",
        "cli/admin.py",
        'where = f"{paths.root}" if default else f"{paths.root}, NOT your default home {default_root()}"',
        'where = f"{paths.root}"',
        ("tests/attacks/test_other_home.py::test_another_home_is_announced_recorded_and_flagged",),
    ),
    Protection(
        "the approval page names a state home that is not the default",
        "web/app.py",
        '"other_home": self.other_home,',
        '"other_home": None,',
        ("tests/attacks/test_other_home.py::test_the_approval_page_names_a_home_that_is_not_the_default",),
    ),
    # -- what a person reads ------------------------------------------------------------------
    Protection(
        "commands print agent-written text with escape sequences made visible",
        "domain/untrusted.py",
        'return visible(text, keep="\\n")',
        "return text",
        ("tests/attacks/test_terminal_injection.py::test_config_check_and_its_errors_escape_a_hostile_project_path",),
    ),
    Protection(
        "a padded or long command is flagged on the page",
        "web/claims.py",
        "    if hides_text(line):\n",
        "    if False:\n",
        ("tests/attacks/test_deceptive_pages.py::test_a_padded_command_is_shown_whole_near_the_top_and_flagged",),
    ),
    Protection(
        "the program a command resolves to and the PATH it inherits are part of what is approved",
        "broker/core.py",
        "run = {**spec.to_json(), **what_runs(spec, base_env or {})}",
        "run = spec.to_json()",
        ("tests/attacks/test_deceptive_pages.py::test_a_window_for_a_command_does_not_cover_it_under_another_path",),
    ),
    # -- what a project config may point at ---------------------------------------------------
    Protection(
        "a project webhook carries no env: credential the user did not allow",
        "configuration/boundaries.py",
        "if var is not None and var not in limits.allow_env:",
        "if False:",
        ("tests/attacks/test_webhook_exfiltration.py::test_the_users_token_never_reaches_the_agents_loopback_server",),
    ),
    Protection(
        "a webhook to a name that resolves to this machine is refused when sending",
        "configuration/destinations.py",
        "if is_internal(address) and not allowed_here:",
        "if False:",
        (
            "tests/attacks/test_webhook_exfiltration.py::test_a_name_that_resolves_to_this_machine_is_refused_when_sending",
        ),
    ),
    Protection(
        "a store outside the project needs the user's allowance",
        "configuration/boundaries.py",
        "if any(real.is_relative_to(root) for root in (project, *limits.allow_outside)):",
        "if True:",
        ("tests/attacks/test_symlink_swap.py::test_a_store_outside_the_project_is_refused_unless_the_user_allows_it",),
    ),
    Protection(
        "an approval is bound to the file a symlink pointed at",
        "configuration/boundaries.py",
        "return [self.key, str(self.real), list(self.holder) if self.holder else None]",
        "return [self.key]",
        ("tests/attacks/test_symlink_swap.py::test_an_open_window_does_not_follow_a_repointed_symlink",),
    ),
    # -- floods and lockouts ------------------------------------------------------------------
    Protection(
        "pending requests are capped per session and overall",
        "broker/core.py",
        "refusal = self._admit(session)",
        "refusal = None",
        ("tests/attacks/test_flooding.py::test_pending_requests_stop_at_the_caps_and_others_can_still_ask",),
    ),
    Protection(
        "the user's settings cap how long a request may stay pending",
        "broker/core.py",
        "timeout = min(timeout, self.max_request_timeout)",
        "pass",
        ("tests/attacks/test_flooding.py::test_a_project_cannot_keep_requests_pending_past_the_users_ceiling",),
    ),
    Protection(
        "twenty wrong codes in a UTC day switch codes off for the rest of that day",
        "approver/factors.py",
        "off = self.codes_off(now)",
        "off = None",
        ("tests/attacks/test_lockout.py::test_burnt_codes_are_refused_all_day_then_come_back_the_next_utc_day",),
    ),
    # -- tampering with the state files -------------------------------------------------------
    Protection(
        "a window with no audited approval lets nothing through",
        "broker/windows.py",
        "self._vouch = vouch or (lambda window: True)",
        "self._vouch = lambda window: True",
        ("tests/attacks/test_state_tampering.py::test_an_inserted_window_lets_nothing_through_and_doctor_names_it",),
    ),
    Protection(
        "an approval with no audited decision releases nothing",
        "broker/core.py",
        "verdict = await asyncio.to_thread(self.integrity.approval, req, in_flight=in_flight)",
        "verdict = True",
        ("tests/attacks/test_state_tampering.py::test_flipping_a_pending_request_to_approved_delivers_nothing",),
    ),
    Protection(
        "a factor put into state.db outside agent-vault cannot approve",
        "approver/factors.py",
        "if recorded is not None and self.factors.fingerprints().get(factor_id) not in recorded:",
        "if False:",
        ("tests/attacks/test_state_tampering.py::test_an_authenticator_app_inserted_by_the_agent_cannot_approve",),
    ),
    Protection(
        "a missing, re-created or rebuilt audit log is an error",
        "broker/integrity.py",
        "    raw = store.get_meta(CHECKPOINT)\n",
        "    raw = None\n",
        ("tests/attacks/test_state_tampering.py::test_a_deleted_audit_log_is_an_error_not_an_empty_intact_one",),
    ),
    Protection(
        "doctor flags settings changed outside agent-vault",
        "broker/integrity.py",
        "        if change is not None and change.digest != change.accepted_digest:\n            found.append",
        "        if False:\n            found.append",
        ("tests/attacks/test_state_tampering.py::test_approval_links_pointed_elsewhere_are_flagged_by_doctor",),
    ),
    Protection(
        "a decision row appended to audit.db from outside while the broker runs vouches for nothing",
        "broker/integrity.py",
        "return row is not None and first is not None and row.id > first and row.id not in self._own_decisions",
        "return False",
        (
            "tests/attacks/test_state_tampering.py::"
            "test_a_decision_appended_to_the_audit_log_while_the_broker_runs_vouches_for_nothing",
        ),
    ),
    Protection(
        "a store server named by the project config gets no credential without the user's allowance",
        "configuration/boundaries.py",
        "    return webhook_problems(config, limits) + stores + endpoint_problems(config, limits)\n",
        "    return webhook_problems(config, limits) + stores\n",
        ("tests/attacks/test_store_endpoint.py",),
    ),
)
