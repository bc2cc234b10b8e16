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
        ("tests/web/test_hardening.py::test_dns_rebinding_host_gets_421_on_every_route",),
    ),
    Protection(
        "state changes need the synchronizer token bound to the browser and the request",
        "web/csrf.py",
        "return hmac.compare_digest(self.token(cookie, purpose), token)",
        "return True",
        ("tests/web/test_attacks.py::test_a_token_from_another_browser_or_request_is_refused",),
    ),
    Protection(
        "a cross-site form post is refused (Origin, Sec-Fetch-Site)",
        "web/hardening.py",
        '    site = request.headers.get("sec-fetch-site")\n',
        "    return True\n",
        ("tests/web/test_attacks.py::test_cross_site_form_post_is_refused",),
    ),
    Protection(
        "pages cannot be framed and carry the security headers",
        "web/hardening.py",
        '"x-frame-options": "DENY",',
        "",
        ("tests/web/test_hardening.py::test_approval_page_forbids_framing",),
    ),
    Protection(
        "approving needs the approver's proof",
        "broker/decisions.py",
        "factor = self.approver.verify(req, proof)",
        'factor = "none"',
        (
            "tests/broker/test_core.py::test_approve_then_deliver_once",
            "tests/attacks/test_console_attacks.py::test_a_signed_in_console_approves_nothing_without_a_factor",
        ),
    ),
    Protection(
        "a value goes only to the session that asked",
        "broker/delivery.py",
        "if req is None or not (secrets.compare_digest(req.requester.session_id, session.id) or joined):",
        "if req is None:",
        ("tests/broker/test_core.py::test_value_goes_only_to_the_session_that_asked",),
    ),
    Protection(
        "values are handed over once",
        "broker/delivery.py",
        "if not self.ledger.store.transition(req.id, [Status.APPROVED], Status.DELIVERED):",
        "if not (self.ledger.store.transition(req.id, [Status.APPROVED], Status.DELIVERED) or True):",
        ("tests/attacks/test_double_delivery.py",),
    ),
    Protection(
        "the audit row is written before a value is released",
        "broker/delivery.py",
        'await ledger.audit(ws, "delivered", req, names=req.all_names, window_end=end)',
        "pass",
        ("tests/broker/test_core.py::test_audit_failure_releases_nothing",),
    ),
    Protection(
        "a request expires; approving after that releases nothing",
        "broker/ledger.py",
        "return self.clock() >= req.expires_at or",
        "return False and",
        ("tests/broker/test_core.py::test_request_expires_and_cannot_be_approved_after",),
    ),
    Protection(
        "a request expires by the monotonic clock too (a clock set back does not revive it)",
        "broker/ledger.py",
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
        "            and w.definition == definition\n",
        "",
        ("tests/broker/test_vault_definition.py::test_a_window_does_not_follow_the_vault_to_another_store",),
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
        "broker/delivery.py",
        "    async def _refuse_if_vault_changed(self, ws: Workspace, req: AccessRequest) -> None:\n",
        "    async def _refuse_if_vault_changed(self, ws: Workspace, req: AccessRequest) -> None:\n        return\n",
        ("tests/broker/test_vault_definition.py",),
    ),
    Protection(
        "where the proxy may send a secret is part of what was approved",
        "broker/workspace.py",
        '        what["proxy"] = proxied',
        "        pass",
        ("tests/attacks/test_proxy_attacks.py::test_rebinding_while_the_command_waits_cancels_its_approval",),
    ),
    Protection(
        "a command run via the proxy gets placeholders, never the values",
        "broker/delivery.py",
        "self.runs.start(req.id, spec, loan.child_values,",
        "self.runs.start(req.id, spec, values,",
        ("tests/attacks/test_proxy_attacks.py::test_the_command_its_output_and_the_audit_hold_only_the_placeholder",),
    ),
    Protection(
        "a proxied request matching an approveEach rule waits for its own approval",
        "broker/proxy_gate.py",
        "return Decision.ALLOW if await self._approved(req) else Decision.DENY",
        "return Decision.ALLOW",
        (
            "tests/attacks/test_proxy_attacks.py::test_an_approve_each_request_is_not_sent_while_it_waits_or_after_a_deny",
        ),
    ),
    Protection(
        "a placeholder sent to an unbound host is reported on every channel",
        "broker/proxy_gate.py",
        "self.ledger.outreach.alert(\n",
        "(\n",
        ("tests/proxy/test_broker_wiring.py::test_a_placeholder_sent_to_another_host_is_refused_audited_and_reported",),
    ),
    Protection(
        "an http_request naming a secret for another host is refused before anyone is asked",
        "broker/access.py",
        "elsewhere = [n for n, bound in hosts.items() if not matches_any(spec.host, frozenset(bound))]",
        "elsewhere: list[str] = []",
        ("tests/proxy/test_http_request.py::test_a_host_the_secret_is_not_bound_to_is_refused_before_anyone_is_asked",),
    ),
    Protection(
        "agent-written names in the console's pictures are escaped",
        "web/charts.py",
        'f"{escape(text)}</text>"',
        'f"{text}</text>"',
        (
            "tests/attacks/test_console_attacks.py::test_markup_in_a_claimed_client_or_project_stays_text_in_the_console",
        ),
    ),
    Protection(
        "no cell of the CSV export starts a spreadsheet formula",
        "web/audit_view.py",
        """return "'" + text if text.startswith(_FORMULA) else text""",
        "return text",
        ("tests/attacks/test_console_attacks.py::test_a_reason_shaped_like_a_formula_is_text_in_the_csv_export",),
    ),
    Protection(
        "agent-written text is shown with hidden characters made visible",
        "domain/untrusted.py",
        'return cat in ("Cc", "Cf", "Zl", "Zp", "Co", "Cs") or (cat == "Zs" and ch != " ")',
        "return False",
        ("tests/web/test_attacks.py::test_agent_text_is_inert_and_visibly_escaped",),
    ),
    Protection(
        "reasons have a size cap",
        "domain/grammar.py",
        "if len(reason) > MAX_REASON:",
        "if False:",
        ("tests/broker/test_core.py::test_bad_names_rejected_before_any_provider_call",),
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
        "problem = _check_row(row, self._expected, self._prev_hash) or _check_time(row, self._prev_ts)",
        "problem = _check_row(row, self._expected, self._prev_hash)",
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
        "broker/access.py",
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
        "if any(inside(real, root) for root in (project, *limits.allow_outside)):",
        "if True:",
        ("tests/attacks/test_symlink_swap.py::test_a_store_outside_the_project_is_refused_unless_the_user_allows_it",),
    ),
    Protection(
        "a store in a sibling directory whose name begins with the project's is outside the project",
        "providers/files.py",
        'return within == top or within.startswith(top if top.endswith("/") else top + "/")',
        "return within.startswith(top)",
        (
            "tests/attacks/test_symlink_swap.py::test_a_store_outside_the_project_is_refused_unless_the_user_allows_it",
            "tests/providers/test_files.py",
        ),
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
        "broker/access.py",
        "refusal = self._admit(session)",
        "refusal = None",
        ("tests/attacks/test_flooding.py::test_pending_requests_stop_at_the_caps_and_others_can_still_ask",),
    ),
    Protection(
        "the user's settings cap how long a request may stay pending",
        "broker/access.py",
        "timeout = min(timeout, self.ceilings.max_request_timeout)",
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
        "broker/delivery.py",
        "verdict = await asyncio.to_thread(ledger.integrity.approval, req, in_flight=in_flight)",
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
        "the broker's memory of its own approval vouches only for the request as it was approved",
        "broker/integrity.py",
        "        return row is not None and request_audited(req, row)\n",
        "        return row is not None\n",
        ("tests/attacks/test_state_tampering.py::test_names_added_to_a_request_this_broker_approved_release_nothing",),
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
        "    return webhook_problems(config, limits) + stores + endpoint_problems(config, limits)"
        " + role_problems(config, limits)\n",
        "    return webhook_problems(config, limits) + stores + role_problems(config, limits)\n",
        ("tests/attacks/test_store_endpoint.py",),
    ),
    # -- the proxy: where a placeholder may go ------------------------------------------------
    Protection(
        "the proxy: a placeholder sent to a host its secret is not bound to is refused",
        "proxy/injection.py",
        "if not use.placeholder.bound_to(host):",
        "if False:",
        (
            "tests/proxy/test_protections.py::test_placeholder_sent_to_another_host_is_refused_and_reported",
            "tests/proxy/test_protections.py::test_placeholder_in_query_or_body_to_another_host_is_refused",
        ),
    ),
    Protection(
        "the proxy: a placeholder in a place its secret does not allow (body, query, path) is refused",
        "proxy/injection.py",
        "elif use.place not in use.placeholder.places:",
        "elif False:",
        ("tests/proxy/test_protections.py::test_placeholder_in_a_place_not_allowed_for_it_is_refused",),
    ),
    Protection(
        "the proxy: a value goes over plain http:// only when its secret allows plain_http",
        "proxy/injection.py",
        "elif not tls and not use.placeholder.plain_http:",
        "elif False:",
        ("tests/proxy/test_protections.py::test_secret_goes_over_plain_http_only_when_allowed",),
    ),
    Protection(
        "the proxy: a placeholder inside Authorization: Basic (base64 user:password) is found",
        "proxy/injection.py",
        "places.append((Place.HEADERS, decoded))",
        "pass",
        (
            "tests/proxy/test_protections.py::test_placeholder_inside_basic_auth_to_another_host_is_refused",
            "tests/proxy/test_clients.py::test_git_ls_remote_with_basic_auth",
        ),
    ),
    Protection(
        "the proxy: an exfiltration attempt is refused without asking the approver",
        "proxy/exchange.py",
        "            await self._report(wrong)\n",
        "            await self._report(wrong)\n"
        "            asked = self._asked(outgoing)\n"
        "            await self.ctx.gate.vet([w.found.placeholder for w in wrong], asked, self.snapshot)\n",
        ("tests/proxy/test_protections.py::test_placeholder_sent_to_another_host_is_refused_and_reported",),
    ),
    Protection(
        "the proxy: an exfiltration attempt is reported to the broker",
        "proxy/exchange.py",
        "await _safely(self.ctx.hooks.on_violation, violation)",
        "pass",
        ("tests/proxy/test_protections.py::test_placeholder_sent_to_another_host_is_refused_and_reported",),
    ),
    Protection(
        "the proxy: an absolute URL inside a CONNECT tunnel must name the tunnel's host (421)",
        "proxy/session.py",
        'if parts.scheme.lower() != "https" or not _same(parts.netloc, destination.host, destination.port, 443):',
        "if False:",
        ("tests/proxy/test_protections.py::test_absolute_url_for_another_host_inside_a_tunnel_is_refused",),
    ),
    Protection(
        "the proxy: the Host header inside a CONNECT tunnel must be the tunnel's host (421)",
        "proxy/session.py",
        "    if not _same(host, destination.host, destination.port, 443):",
        "    if False:",
        ("tests/proxy/test_protections.py::test_other_host_name_inside_a_tunnel_is_refused",),
    ),
    # (_plain_request's refusal of "@" in the URL's authority is not an entry: split_authority refuses
    # every such authority too (400 either way), so no test can fail with it removed.)
    Protection(
        "the proxy: the Host header of a plain http:// request must be the URL's host (421)",
        "proxy/session.py",
        "if not _same(header_host, host, port, 80):",
        "if False:",
        ("tests/proxy/test_protections.py::test_plain_request_with_another_host_header_is_refused",),
    ),
    Protection(
        "the proxy: a wildcard host binds only the names below it (*.x.test is not evilx.test)",
        "proxy/hosts.py",
        "return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1",
        "return host.endswith(pattern[2:])",
        ("tests/proxy/test_units.py::test_a_wildcard_binds_only_the_names_below_it",),
    ),
    # -- the proxy: asking the approver -------------------------------------------------------
    Protection(
        "the proxy: a request matching an approveEach rule waits for its own approval",
        "proxy/approval.py",
        "rule = placeholder.rule_for(asked.methods, asked.raw_path)",
        "rule = None",
        (
            "tests/proxy/test_protections.py::test_approve_each_rule_denied",
            "tests/proxy/test_protections.py::test_approve_each_rule_approved",
        ),
    ),
    Protection(
        "the proxy: the approver's deny refuses the request (403, nothing sent)",
        "proxy/approval.py",
        "if decision is not Decision.ALLOW:",
        "if False:",
        (
            "tests/proxy/test_protections.py::test_first_use_denied_sends_nothing",
            "tests/proxy/test_protections.py::test_approve_each_rule_denied",
        ),
    ),
    Protection(
        "the proxy: no decision within the approval timeout refuses the request (403)",
        "proxy/approval.py",
        "        except TimeoutError:\n            return Refusal(",
        "        except TimeoutError:\n            return None\n            return Refusal(",
        ("tests/proxy/test_protections.py::test_approve_each_rule_times_out",),
    ),
    Protection(
        "the proxy: a failing approval hook refuses the request (fails closed)",
        "proxy/approval.py",
        '            log.warning("proxy approval hook failed: %s", type(exc).__name__)\n',
        '            log.warning("proxy approval hook failed: %s", type(exc).__name__)\n            return None\n',
        ("tests/proxy/test_protections.py::test_approval_hook_failure_fails_closed",),
    ),
    Protection(
        "the proxy: an allow on a connection covers only the host it was given for",
        "proxy/approval.py",
        "key = (placeholder.secret_id, asked.host)",
        'key = (placeholder.secret_id, "")',
        ("tests/proxy/test_protections.py::test_an_allow_covers_only_the_host_it_was_given_for",),
    ),
    Protection(
        "the proxy: the body preview the approver sees has control characters made visible",
        "proxy/approval.py",
        'return visible(text[: self._preview_limit], keep="\\n"), cut',
        "return text[: self._preview_limit], cut",
        ("tests/proxy/test_protections.py::test_approve_each_rule_approved",),
    ),
    # -- the proxy: approveEach rules cannot be dodged by spelling the path differently -------
    Protection(
        "the proxy: approveEach matching percent-decodes the path",
        "proxy/rules.py",
        "decoded = unquote(path)",
        "decoded = path",
        (
            "tests/proxy/test_units.py::test_rules",
            "tests/proxy/test_protections.py::test_approve_each_rule_cannot_be_dodged_by_spelling",
        ),
    ),
    Protection(
        "the proxy: approveEach matching decodes a double percent-encoding too",
        "proxy/rules.py",
        "for _ in range(3):",
        "for _ in range(1):",
        ("tests/proxy/test_units.py::test_rules",),
    ),
    Protection(
        "the proxy: approveEach matching resolves dot segments",
        "proxy/rules.py",
        'path = posixpath.normpath("/" + "/".join(s for s in segments if s))',
        'path = "/" + "/".join(s for s in segments if s)',
        ("tests/proxy/test_units.py::test_rules",),
    ),
    Protection(
        "the proxy: approveEach matching collapses repeated slashes",
        "proxy/rules.py",
        "s for s in segments if s",
        "s for s in segments",
        (
            "tests/proxy/test_units.py::test_normalize_path",
            "tests/proxy/test_protections.py::test_approve_each_rule_cannot_be_dodged_by_spelling",
        ),
    ),
    Protection(
        "the proxy: approveEach matching drops ;params from path segments",
        "proxy/rules.py",
        'segment.split(";", 1)[0] for segment in',
        "segment for segment in",
        (
            "tests/proxy/test_units.py::test_normalize_path",
            "tests/proxy/test_protections.py::test_approve_each_rule_cannot_be_dodged_by_spelling",
        ),
    ),
    # (the trailing-slash strip, path.rstrip("/"), is not an entry: normpath and the empty-segment filter
    # already leave no trailing slash, so no test can fail with it removed.)
    Protection(
        "the proxy: approveEach matching ignores case",
        "proxy/rules.py",
        'return path.rstrip("/").lower() or "/"',
        'return path.rstrip("/") or "/"',
        (
            "tests/proxy/test_units.py::test_normalize_path",
            "tests/proxy/test_protections.py::test_approve_each_rule_cannot_be_dodged_by_spelling",
        ),
    ),
    Protection(
        "the proxy: approveEach matching reads a backslash as a slash",
        "proxy/rules.py",
        'path.replace("\\\\", "/")',
        "path",
        ("tests/proxy/test_units.py::test_rules",),
    ),
    Protection(
        "the proxy: approveEach matching leaves out the query and fragment",
        "proxy/rules.py",
        'path = path.split("?", 1)[0].split("#", 1)[0]',
        "path = path",
        ("tests/proxy/test_units.py::test_rules",),
    ),
    Protection(
        "the proxy: approveEach rules apply to the method in X-HTTP-Method-Override too",
        "proxy/rules.py",
        "if name.lower() in METHOD_OVERRIDES:",
        "if False:",
        ("tests/proxy/test_protections.py::test_approve_each_rule_cannot_be_dodged_by_spelling",),
    ),
    Protection(
        "the proxy: an approveEach rule without a method is refused, not silently never matched",
        "proxy/rules.py",
        "if not 1 <= len(parts) <= 2 or not _METHOD.fullmatch(parts[0]):",
        "if not 1 <= len(parts) <= 2:",
        ("tests/proxy/test_units.py::test_a_malformed_rule_is_refused_not_ignored",),
    ),
    Protection(
        "the proxy: an approveEach rule whose path does not start with / is refused",
        "proxy/rules.py",
        'if path != "*" and not path.startswith("/"):',
        "if False:",
        (
            "tests/proxy/test_units.py::test_a_malformed_rule_is_refused_not_ignored",
            "tests/proxy/test_units.py::test_registry_refuses_unsafe_entries",
        ),
    ),
    # -- the proxy: where it connects, and who may use it -------------------------------------
    Protection(
        "the proxy: allow_only refuses hosts not listed (and not bound to a secret)",
        "proxy/destinations.py",
        "if self._allow_only is not None and not matches_any(host, self._allow_only | self._bound_hosts()):",
        "if False:",
        ("tests/proxy/test_protections.py::test_allow_only_refuses_other_hosts",),
    ),
    Protection(
        "the proxy: a destination resolving to a loopback, link-local or private address is refused",
        "proxy/destinations.py",
        "self._check_address(host, ipaddress.ip_address(text))",
        "pass",
        (
            "tests/proxy/test_protections.py::test_private_destination_refused_by_resolved_address",
            "tests/proxy/test_units.py::test_a_name_with_any_private_answer_is_refused",
        ),
    ),
    Protection(
        "the proxy: every address a name resolves to is checked, not only the first",
        "proxy/destinations.py",
        "for text in addresses:",
        "for text in addresses[:1]:",
        ("tests/proxy/test_units.py::test_a_name_with_any_private_answer_is_refused",),
    ),
    # (is_public's IPv4-mapped step is not an entry: the Python this runs on, 3.11.7, already judges
    # ::ffff:a.b.c.d by its IPv4 address, so no test can fail with that step removed.)
    Protection(
        "the proxy: a multicast address is not a public destination",
        "proxy/destinations.py",
        "return address.is_global and not address.is_multicast",
        "return address.is_global",
        ("tests/proxy/test_units.py::test_non_public_addresses",),
    ),
    Protection(
        "the proxy: it connects to the addresses it checked (never a second lookup of the name)",
        "proxy/upstream.py",
        "                    address,\n",
        "                    host,\n",
        (
            "tests/proxy/test_protections.py::test_unknown_host_passes_untouched",
            "tests/proxy/test_clients.py::test_curl",
        ),
    ),
    Protection(
        "the proxy: a tunnel it does not look into goes to the addresses it checked",
        "proxy/session.py",
        "upstream = await asyncio.open_connection(address, destination.port)",
        "upstream = await asyncio.open_connection(destination.host, destination.port)",
        ("tests/proxy/test_connections.py::test_a_tunnel_not_looked_into_goes_to_the_checked_address",),
    ),
    Protection(
        "the proxy: upstream certificates are verified against the system's trust store",
        "proxy/config.py",
        "context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)",
        "context = ssl._create_unverified_context()",
        ("tests/proxy/test_protections.py::test_an_upstream_whose_certificate_does_not_verify_gets_nothing",),
    ),
    Protection(
        "the proxy: a client without the proxy's token gets 407",
        "proxy/session.py",
        "if token is not None and hmac.compare_digest(token, self.shared.token.encode()):",
        "if True:",
        ("tests/proxy/test_protections.py::test_proxy_needs_its_token",),
    ),
    Protection(
        "the proxy: its token (Proxy-Authorization) is not forwarded upstream",
        "proxy/headers.py",
        '        b"proxy-authorization",\n',
        "",
        ("tests/proxy/test_protections.py::test_secret_goes_over_plain_http_only_when_allowed",),
    ),
    Protection(
        "the proxy: it listens on a loopback address only",
        "proxy/server.py",
        "if not ipaddress.ip_address(host).is_loopback:",
        "if False:",
        ("tests/proxy/test_connections.py::test_the_proxy_listens_on_loopback_only",),
    ),
    Protection(
        "the proxy: a request body larger than max_body is refused (413)",
        "proxy/http1.py",
        "if size > limit:",
        "if False:",
        ("tests/proxy/test_connections.py::test_body_over_the_limit_is_refused",),
    ),
    # -- the proxy: a value never reaches the client ------------------------------------------
    Protection(
        "the proxy: response headers are scrubbed",
        "proxy/responses.py",
        "out = [(name, self._scrub(value)) for name, value in headers]",
        "out = list(headers)",
        (
            "tests/proxy/test_scrubbing.py::test_head_response_keeps_its_headers",
            "tests/proxy/test_scrubbing.py::test_echo_is_scrubbed",
        ),
    ),
    Protection(
        "the proxy: response bodies are scrubbed",
        "proxy/responses.py",
        "out = self._replacer.feed(piece)",
        "out = piece",
        (
            "tests/proxy/test_scrubbing.py::test_echo_is_scrubbed[identity-length-0]",
            "tests/proxy/test_scrubbing.py::test_value_echoed_by_a_host_it_was_not_sent_to_is_scrubbed",
        ),
    ),
    Protection(
        "the proxy: a compressed response is decoded before it is scrubbed",
        "proxy/responses.py",
        "        if codings:\n",
        "        if False:\n",
        (
            "tests/proxy/test_clients.py::test_python_clients",
            "tests/proxy/test_scrubbing.py::test_echo_is_scrubbed",
        ),
    ),
    Protection(
        "the proxy: a gzip response is decoded and scrubbed",
        "proxy/codings.py",
        "return _Zlib(16 + zlib.MAX_WBITS)",
        "return _Chain([])",
        ("tests/proxy/test_scrubbing.py::test_echo_is_scrubbed[gzip-length-0]",),
    ),
    Protection(
        "the proxy: a deflate response (zlib or raw) is decoded and scrubbed",
        "proxy/codings.py",
        "return _Deflate()",
        "return _Chain([])",
        (
            "tests/proxy/test_scrubbing.py::test_echo_is_scrubbed[deflate-length-0]",
            "tests/proxy/test_scrubbing.py::test_echo_is_scrubbed[rawdeflate-length-0]",
        ),
    ),
    Protection(
        "the proxy: a br response is decoded and scrubbed",
        "proxy/codings.py",
        "return _Brotli()",
        "return _Chain([])",
        ("tests/proxy/test_scrubbing.py::test_echo_is_scrubbed[br-length-0]",),
    ),
    Protection(
        "the proxy: a response in several codings (gzip, br) is decoded through all of them",
        "proxy/codings.py",
        "return decoders[0] if len(decoders) == 1 else _Chain(decoders)",
        "return decoders[0]",
        ("tests/proxy/test_scrubbing.py::test_echo_is_scrubbed[gzip,br-length-0]",),
    ),
    Protection(
        "the proxy: a value split across reads, chunks or SSE events is caught (the held tail)",
        "proxy/search.py",
        "cut = self._needles.hold_from(buf, matches)",
        "cut = len(buf)",
        (
            "tests/proxy/test_scrubbing.py::test_server_sent_events_are_scrubbed_as_they_stream",
            "tests/proxy/test_units.py::test_scrubbing_catches_a_value_split_at_every_position",
        ),
    ),
    Protection(
        "the proxy: the tail held back when a body ends is scrubbed too",
        "proxy/search.py",
        "out, hits = self._needles.replace(held)",
        "out, hits = held, set()",
        ("tests/proxy/test_units.py::test_scrubbing_scrubs_what_was_held_back_when_the_body_ends",),
    ),
    Protection(
        "the proxy: a response it cannot decode is not passed on after an injection (502)",
        "proxy/exchange.py",
        "if filtered.unreadable and self.tally.injected:",
        "if False:",
        ("tests/proxy/test_scrubbing.py::test_unreadable_encoding_is_not_passed_on_after_an_injection",),
    ),
    Protection(
        "the proxy: events show a value in a path as its placeholder",
        "proxy/paths.py",
        "return visible(snapshot.scrub_text(path))",
        "return visible(path)",
        ("tests/proxy/test_units.py::test_event_path_drops_query_values",),
    ),
    Protection(
        "the proxy: events carry query keys without their values",
        "proxy/paths.py",
        'path += "?" + "&".join(keys)',
        'path += "?" + query',
        (
            "tests/proxy/test_units.py::test_event_path_drops_query_values",
            "tests/proxy/test_protections.py::test_placeholder_sent_to_another_host_is_refused_and_reported",
        ),
    ),
    # -- the proxy: its CA and leaf certificates ----------------------------------------------
    Protection(
        "the proxy: the CA key file is written 0600 (home.write_whole, as every private file written whole)",
        "home.py",
        'fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")',
        'fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")'
        "\n    os.fchmod(fd, 0o644)",
        (
            "tests/proxy/test_ca.py::test_ca_files_and_modes",
            "tests/test_home.py::test_a_file_is_private_from_its_first_byte_and_replaces_the_old_one",
        ),
    ),
    Protection(
        "the proxy: the CA directory is 0700",
        "proxy/ca.py",
        "directory.mkdir(mode=0o700, parents=True, exist_ok=True)\n    os.chmod(directory, 0o700)",
        "directory.mkdir(parents=True, exist_ok=True)\n    os.chmod(directory, 0o755)",
        ("tests/proxy/test_ca.py::test_ca_files_and_modes",),
    ),
    Protection(
        "the proxy: a CA key other users can read is refused",
        "proxy/ca.py",
        "if stat.S_IMODE(key_path.stat().st_mode) & 0o077:",
        "if False:",
        ("tests/proxy/test_ca.py::test_a_key_others_can_read_is_refused",),
    ),
    Protection(
        "the proxy: its CA can sign leaves only (path length 0)",
        "proxy/ca.py",
        "x509.BasicConstraints(ca=True, path_length=0)",
        "x509.BasicConstraints(ca=True, path_length=None)",
        ("tests/proxy/test_ca.py::test_ca_files_and_modes",),
    ),
    Protection(
        "the proxy: a leaf certificate is not a CA",
        "proxy/ca.py",
        "x509.BasicConstraints(ca=False, path_length=None)",
        "x509.BasicConstraints(ca=True, path_length=None)",
        ("tests/proxy/test_ca.py::test_leaf_names_and_lifetime",),
    ),
    Protection(
        "the proxy: the CA is replaced before it expires",
        "proxy/ca.py",
        "if loaded is None or loaded[1].not_valid_after_utc - now < CA_RENEW_BEFORE:",
        "if loaded is None:",
        ("tests/proxy/test_ca.py::test_ca_is_kept_across_loads_and_renewed_near_its_end",),
    ),
    Protection(
        "the proxy: a cached leaf certificate is renewed before it expires",
        "proxy/leaves.py",
        "if cached is not None and cached[1] - now > RENEW_BEFORE:",
        "if cached is not None:",
        ("tests/proxy/test_ca.py::test_leaves_are_cached_then_renewed_before_they_expire",),
    ),
    Protection(
        "the proxy: a leaf's key does not stay on disk",
        "proxy/leaves.py",
        "os.unlink(path)",
        "pass",
        ("tests/proxy/test_ca.py::test_leaves_are_cached_then_renewed_before_they_expire",),
    ),
    # -- the proxy: what the broker may register ----------------------------------------------
    Protection(
        "the proxy: a value with a line break or control character cannot go in headers",
        "proxy/placeholders.py",
        "if Place.HEADERS in places and any(",
        "if False and any(",
        ("tests/proxy/test_units.py::test_registry_refuses_unsafe_entries",),
    ),
    Protection(
        "the proxy: a value too short to scrub safely is refused",
        "proxy/placeholders.py",
        "if len(value) < MIN_VALUE:",
        "if False:",
        ("tests/proxy/test_units.py::test_registry_refuses_unsafe_entries",),
    ),
    Protection(
        "the proxy: a secret must name the hosts it may be sent to",
        "proxy/placeholders.py",
        "        not bound\n        or ",
        "        ",
        ("tests/proxy/test_units.py::test_registry_refuses_unsafe_entries",),
    ),
    Protection(
        "the proxy: a placeholder is long enough, visible and without spaces",
        "proxy/placeholders.py",
        "if len(text) < MIN_PLACEHOLDER or has_hidden(text) or any(ch.isspace() for ch in text):",
        "if False:",
        ("tests/proxy/test_units.py::test_registry_refuses_unsafe_entries",),
    ),
    Protection(
        "the proxy: a placeholder does not overlap its value",
        "proxy/placeholders.py",
        "if text in plain or plain in text:",
        "if False:",
        ("tests/proxy/test_units.py::test_registry_refuses_unsafe_entries",),
    ),
    Protection(
        "the proxy: a placeholder text cannot be registered again for another secret",
        "proxy/placeholders.py",
        "if text in self._by_text:",
        "if False:",
        ("tests/proxy/test_units.py::test_a_placeholder_text_is_registered_once",),
    ),
    Protection(
        "the proxy: a compressed response is passed on one decode step at a time, never unfolded whole",
        "proxy/responses.py",
        "for piece in self._decoder.decode(data) if self._decoder is not None else (data,):",
        'for piece in (b"".join(self._decoder.decode(data)),) if self._decoder is not None else (data,):',
        ("tests/proxy/test_units.py::test_a_compressed_response_is_passed_on_as_it_unfolds",),
    ),
    # -- system mode (docs/hardened.md) ----------------------------------------------------------
    Protection(
        "a per-user broker's socket API serves only its own uid",
        "broker/peers.py",
        'return PeerRefused("this broker serves only its own user")',
        "return None",
        ("tests/broker/test_peers.py::test_a_per_user_broker_refuses_another_uid_with_the_reason",),
    ),
    Protection(
        "a system broker serves only the members of its group (checked in the group database on each call)",
        "broker/peers.py",
        "if login is None or not is_member(login, self.group):",
        "if False:",
        ("tests/broker/test_peers.py::test_a_system_broker_serves_the_members_of_its_group_only",),
    ),
    Protection(
        "other users' agents may not stop the system broker",
        "broker/peers.py",
        "if path in OWNER_ONLY:",
        "if False:",
        ("tests/broker/test_peers.py::test_other_users_may_not_stop_the_system_broker",),
    ),
    Protection(
        "a system broker's allowed users see only their own requests and windows, and none of its set-up",
        "broker/peers.py",
        "if peer is None or not self.names_callers or peer[1] == self.owner:",
        "if True:",
        ("tests/broker/test_peers.py::test_an_allowed_user_sees_and_ends_only_their_own_requests_and_windows",),
    ),
    Protection(
        "a system broker's allowed user cannot end another user's window",
        "broker/core.py",
        "if user is not None and all(w.id != window_id for w in self.windows(user)):",
        "if False:",
        ("tests/broker/test_peers.py::test_an_allowed_user_sees_and_ends_only_their_own_requests_and_windows",),
    ),
    Protection(
        "values moved in by `system import` stay the broker's alone (0600)",
        "broker/system_vaults.py",
        "os.chmod(target, 0o600)",
        "os.chmod(target, 0o644)",
        ("tests/system/test_system_mode.py::test_system_import_moves_a_projects_env_file_into_the_brokers_vault",),
    ),
    Protection(
        "doctor reports a move that worked against the system broker as a hole",
        "system/isolation.py",
        'return Probe(move, False, "IT WORKED: this user can do it, and so can an agent running as them")',
        'return Probe(move, True, "refused (permission denied)")',
        ("tests/system/test_system_mode.py::test_doctor_names_a_loosened_file_as_a_hole",),
    ),
    Protection(
        "a system broker's sessions use the system vault config, never the one a front door names",
        "broker/core.py",
        "path, env, name = fixed.place(user)",
        "pass",
        ("tests/broker/test_peers.py::test_the_system_broker_uses_its_own_vaults_whatever_the_session_names",),
    ),
    Protection(
        "a window opened for one user's agent lets no other user's agent read (system broker)",
        "broker/system_vaults.py",
        "return self.path, env, f\"{self.path} (for {user or 'an unnamed user'})\"",
        "return self.path, env, str(self.path)",
        ("tests/broker/test_peers.py::test_a_window_opened_for_one_users_agent_lets_no_other_users_agent_read",),
    ),
    Protection(
        "a system broker runs no command of an agent (it would run as the owner of the vaults)",
        "broker/access.py",
        "            self.system_vaults.refuse_commands()\n",
        "            pass\n",
        (
            "tests/broker/test_peers.py::test_a_system_broker_runs_no_command_of_an_agent",
            "tests/system/test_system_mode.py::test_run_with_secrets_is_refused_by_the_system_broker",
        ),
    ),
    Protection(
        "a front door of a system broker's user never starts a broker itself",
        "frontdoor/launcher.py",
        "autostart = autostart and not paths.system",
        "autostart = autostart",
        ("tests/frontdoor/test_system_broker.py::test_a_system_front_door_never_starts_a_broker_itself",),
    ),
    Protection(
        "a front door believes only a marker (and socket dir) that root alone could have written",
        "system/trust.py",
        "if st.st_uid not in trusted:",
        "if False:",
        ("tests/frontdoor/test_system_broker.py::test_a_marker_someone_else_could_have_written_stops_the_front_door",),
    ),
    Protection(
        "the front door uses the system broker root set up for its user, whatever AGENT_VAULT_HOME says",
        "frontdoor/session.py",
        "return my_broker() or state_paths()",
        "return state_paths()",
        ("tests/system/test_system_mode.py::test_agent_vault_home_elsewhere_still_reaches_the_system_broker",),
    ),
    Protection(
        "the system broker's state dir is its user's alone (an agent running as an allowed user reads nothing)",
        "system/install.py",
        'self._dir(state, 0o700, uid, gid, f"the state dir',
        'self._dir(state, 0o755, uid, gid, f"the state dir',
        ("tests/system/test_system_mode.py::test_the_allowed_users_agent_cannot_read_or_change_the_brokers_files",),
    ),
    Protection(
        "a system broker's user cannot enrol or remove factors with the CLI (root's to do)",
        "cli/system.py",
        "    if paths is not None:\n        raise SystemModeError(",
        "    if False:\n        raise SystemModeError(",
        ("tests/system/test_system_mode.py::test_enrolling_a_factor_without_root_fails",),
    ),
    Protection(
        "`store migrate --update-settings` accepts only its own [store] url line, never an unaccepted settings edit",
        "broker/integrity.py",
        "if change.digest == change.accepted_digest or settings_snapshot(edited)[0] == change.accepted_digest:",
        "if True:",
        (
            "tests/attacks/test_store_migrate.py::test_a_settings_edit_is_not_accepted_through_the_move",
            "tests/store/test_migration.py::test_update_settings_refuses_a_settings_file_changed_since_it_was_accepted",
        ),
    ),
    Protection(
        "`store migrate` never moves an audit chain that does not verify (the copy would hide where it broke)",
        "store/migration.py",
        "            raise StoreMigrationError(refused_chain(self.audit_db, result))",
        "            pass",
        ("tests/store/test_migration.py::test_a_chain_that_does_not_verify_is_refused_at_its_first_bad_row",),
    ),
    Protection(
        "`store migrate --update-settings` never writes a database password into settings.toml",
        "cli/store.py",
        "if update_settings and setting == url and _has_password(url):",
        "if False:",
        ("tests/store/test_migration.py::test_update_settings_refuses_a_url_with_a_password",),
    ),
    Protection(
        "a request whose vault requires several approvers waits until enough distinct ones approved",
        "broker/decisions.py",
        "            if progress.needed > 0:  # counted: it waits for more distinct approvers\n",
        "            if False:\n",
        (
            "tests/broker/test_several_approvers.py::test_two_distinct_approvers_release_once_and_the_agent_waits_for_both",
        ),
    ),
    Protection(
        "an approver the vault's `approvers` list does not name cannot approve its requests",
        "broker/approvals.py",
        "        if not rule.allows(name):\n",
        "        if False:\n",
        ("tests/broker/test_several_approvers.py::test_an_approver_the_vault_does_not_list_is_refused",),
    ),
    Protection(
        "the owner of the asking agent cannot approve its request when the vault says ownerMayApprove = false",
        "broker/approvals.py",
        "if not rule.owner_may_approve and name == self.owner_of(req):",
        "if False:",
        ("tests/broker/test_several_approvers.py::test_the_agents_owner_may_not_approve_when_the_vault_says_so",),
    ),
    Protection(
        "a removed approver's factors approve nothing, even one left behind in the store",
        "broker/approvals.py",
        "        if not self.roster.is_live(approver):\n",
        "        if False:\n",
        ("tests/broker/test_several_approvers.py::test_a_factor_left_behind_by_a_removed_approver_cannot_approve",),
    ),
    Protection(
        "an approval of a request counts only with its audit row (not one written into the state store)",
        "broker/approvals.py",
        "if (shown(a.approver) in vouched or a.approver == just)",
        "if (True or a.approver == just)",
        ("tests/attacks/test_several_approvers.py::test_posting_approvals_without_a_factor_counts_for_nothing",),
    ),
    Protection(
        "an invitation link enrols an approver only if `approvers invite` audited it",
        "web/enrolment.py",
        "if not broker.integrity.invite_recorded(token.approver, token.key):",
        "if False:",
        ("tests/attacks/test_several_approvers.py::test_an_enrolment_link_made_up_in_the_state_store_enrols_nobody",),
    ),
    Protection(
        "a named approver's factor is fingerprinted with their name: moved to another approver, it approves nothing",
        "store/factors.py",
        "        fields.append(approver[0])\n",
        "        pass\n",
        ("tests/attacks/test_several_approvers.py::test_a_factor_moved_to_another_approver_by_hand_does_not_count",),
    ),
    Protection(
        "an authenticator code is checked against the apps of the approver it is given for only",
        "approver/factors.py",
        "candidates = self.factors.totp_secrets(approver)",
        "candidates = self.factors.totp_secrets()",
        ("tests/broker/test_several_approvers.py::test_whose_code_it_is_decides_whose_apps_are_tried",),
    ),
    Protection(
        "a project config on a system broker can only raise `require`, never lower it",
        "domain/approval.py",
        "max(self.require, require or 1),",
        "require or self.require,",
        (
            "tests/broker/test_several_approvers.py::test_a_project_config_cannot_loosen_who_approves_on_a_system_broker",
        ),
    ),
    Protection(
        "a project config on a system broker can only narrow `approvers`, never add a name",
        "domain/approval.py",
        "narrowed = wanted if narrowed is None else tuple(n for n in narrowed if n in wanted)",
        "narrowed = wanted",
        (
            "tests/broker/test_several_approvers.py::test_a_project_config_cannot_loosen_who_approves_on_a_system_broker",
        ),
    ),
    Protection(
        "an approver's channel is told only of requests that approver may approve",
        "channels/hub.py",
        "ids = tuple(rid for rid, rule in rules.items() if rule.reaches(approver))",
        "ids = tuple(rules)",
        ("tests/channels/test_approver_channels.py::test_each_approvers_channel_hears_only_of_what_they_may_approve",),
    ),
    Protection(
        "a revoked agent's token is refused at its next call",
        "team/gate.py",
        "        if agent.revoked_at is not None:\n",
        "        if False:\n",
        ("tests/team/test_remote_front_door.py::test_revoking_an_agent_refuses_its_next_call_mid_session",),
    ),
    Protection(
        "an unknown or missing agent token is refused",
        "team/gate.py",
        "        if agent is None:\n",
        "        if agent is None and False:\n",
        ("tests/team/test_remote_front_door.py::test_an_unknown_token_is_refused",),
    ),
    Protection(
        "failed agent-token attempts are limited per source address",
        "team/gate.py",
        "        if failures.tokens < 1:\n",
        "        if False:\n",
        ("tests/attacks/test_agent_tokens.py::test_a_token_brute_force_is_rate_limited",),
    ),
    Protection(
        "the team listener's API needs an agent token on every call",
        "team/app.py",
        "        if isinstance(verdict, Refused):\n",
        "        if False:\n",
        ("tests/attacks/test_agent_tokens.py::test_the_api_without_a_token_gives_nothing",),
    ),
    Protection(
        "a remote agent's session is bound to that agent",
        "broker/api.py",
        "        if (agent.id if agent else None) != (owner.id if owner else None):",
        "        if False:",
        ("tests/attacks/test_agent_tokens.py::test_a_session_belongs_to_its_agent_alone",),
    ),
    Protection(
        "who a remote agent is comes from its token, never from its session body",
        "broker/core.py",
        '            requester = {**requester, "agent": agent.name, "owner": agent.owner}\n',
        "",
        ("tests/attacks/test_agent_tokens.py::test_an_agent_naming_another_agent_in_its_session_body_is_still_itself",),
    ),
    Protection(
        "a remote agent may call only what a front door needs",
        "broker/api.py",
        "            if not agents and agent_of(request) is not None:\n",
        "            if False:\n",
        ("tests/team/test_listener.py::test_an_agent_may_call_only_what_a_front_door_needs",),
    ),
    Protection(
        "a remote agent runs no command on the broker's host",
        "broker/api.py",
        'and (data.get("purpose") == "inject" or "lend" in data or "run" in data):',
        "and False:",
        ("tests/attacks/test_agent_tokens.py::test_a_remote_agent_cannot_run_a_command_on_the_broker_host",),
    ),
    Protection(
        "a remote agent gets the team's vaults, whatever config it names",
        "broker/core.py",
        "            fixed = self.team_vaults\n",
        "            fixed = self.system_vaults\n",
        ("tests/team/test_listener.py::test_a_remote_agent_gets_the_teams_vaults_whatever_config_it_names",),
    ),
    Protection(
        "X-Forwarded-For counts only from trusted proxies",
        "team/forwarded.py",
        "        if not self.trusts(peer):\n",
        "        if False:\n",
        ("tests/team/test_listener.py::test_behind_a_proxy_forwarded_headers_count_only_from_trusted_proxies",),
    ),
    Protection(
        "behind a proxy, a call not made over HTTPS is refused",
        "team/app.py",
        '        if origin.proxied and origin.scheme != "https":\n',
        "        if False:\n",
        ("tests/team/test_listener.py::test_behind_a_proxy_forwarded_headers_count_only_from_trusted_proxies",),
    ),
    Protection(
        "a remote front door verifies the broker's certificate",
        "frontdoor/remote.py",
        "        context.minimum_version = ssl.TLSVersion.TLSv1_2\n",
        "        context.minimum_version = ssl.TLSVersion.TLSv1_2\n"
        "        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE\n",
        ("tests/attacks/test_agent_tokens.py::test_a_front_door_refuses_a_broker_whose_certificate_it_does_not_trust",),
    ),
    Protection(
        "an agent token is stored only as its hash",
        "store/agents.py",
        "        if not self._insert(agent, token_digest(token)):\n",
        "        if not self._insert(agent, token):\n",
        ("tests/store/test_agent_engines.py::test_a_token_is_shown_once_and_stored_only_hashed",),
    ),
    Protection(
        "per-agent limits hold across the agent's sessions",
        "broker/access.py",
        "        if session.agent is not None:  # a team agent's own limits first: they are the ones it was given\n",
        "        if False:\n",
        ("tests/team/test_listener.py::test_per_agent_limits_count_all_its_sessions",),
    ),
    Protection(
        "an agent row written or changed in the state store by hand is refused at the team listener",
        "team/gate.py",
        "        if not await asyncio.to_thread(self._vouched, agent, token_digest(token.strip())):",
        "        if False:",
        (
            "tests/attacks/test_agent_tokens.py::"
            "test_an_agent_written_into_the_state_store_by_hand_is_refused_and_reported",
            "tests/attacks/test_agent_tokens.py::test_an_audited_agent_whose_owner_was_changed_by_hand_is_refused",
        ),
    ),
    Protection(
        "denying a rotation needs the approver's factor (an agent cannot keep a leaked value alive)",
        "broker/decisions.py",
        "        if approve or rotation:\n",
        "        if approve:\n",
        ("tests/attacks/test_rotation_attacks.py::test_the_agent_cannot_deny_a_rotation_without_a_factor",),
    ),
    Protection(
        "closing the agent's session does not end a rotation",
        "broker/core.py",
        "mine = req is not None and req.requester.session_id == session.id and ROTATE not in req.extra",
        "mine = req is not None and req.requester.session_id == session.id",
        ("tests/attacks/test_rotation_attacks.py::test_the_agent_cannot_deny_a_rotation_without_a_factor",),
    ),
    Protection(
        "a project config's rotate.command runs only if the user's settings list that exact command",
        "configuration/boundaries.py",
        "    if not command or limits.trusted or tuple(command) in limits.allow_rotate_commands:\n",
        "    if True:\n",
        (
            "tests/attacks/test_rotation_attacks.py::"
            "test_a_project_config_cannot_make_the_broker_run_its_own_rotate_command",
            "tests/broker/test_rotation.py::test_a_command_the_settings_do_not_list_is_refused_before_anyone_is_asked",
        ),
    ),
    Protection(
        "a rotation is bound to the rotate settings it was asked with: an edit before the approval cancels it",
        "broker/workspace.py",
        '        what["rotate"] = rotated\n',
        "        pass\n",
        (
            "tests/attacks/test_rotation_attacks.py::"
            "test_a_project_config_cannot_make_the_broker_run_its_own_rotate_command",
        ),
    ),
    Protection(
        "asking for a rotation ends the secret's open windows at once",
        "broker/rotation.py",
        '        await self._end_windows(ws, vault, name, "a rotation was asked for")\n',
        "",
        ("tests/attacks/test_rotation_attacks.py::test_the_rotation_path_never_hands_the_new_value_to_the_agent",),
    ),
    Protection(
        "a session is its front door's process's: another process on the socket cannot use its id, over HTTP "
        "or the framed protocol (the peer is the kernel's word, never a frame's)",
        "broker/api.py",
        "session.requester.pid not in (None, peer[0])",
        "False",
        ("tests/attacks/test_framed_socket.py::test_a_framed_call_cannot_use_another_processs_session",),
    ),
    Protection(
        "a framed call carries its connection's peer credentials (SO_PEERCRED), as an HTTP call on the socket does: "
        "without them the session and caller checks would have nobody to check",
        "broker/frames.py",
        "            PEER_KEY: self._peer,\n",
        "",
        ("tests/attacks/test_framed_socket.py::test_a_framed_call_cannot_use_another_processs_session",),
    ),
    Protection(
        "a store path's remembered real path is used only while the path still leads to the same file: a "
        "re-pointed symlink is resolved again",
        "providers/files.py",
        "if known is not None and known[0] == (st.st_dev, st.st_ino):",
        "if known is not None:",
        (
            "tests/attacks/test_symlink_swap.py::test_an_open_window_does_not_follow_a_repointed_symlink",
            "tests/attacks/test_symlink_swap.py::test_a_pending_request_is_bound_to_where_the_link_pointed",
        ),
    ),
    Protection(
        "a project config mints credentials only from roles the user's settings allow",
        "configuration/boundaries.py",
        "            if role not in limits.allow_roles:\n",
        "            if False:\n",
        (
            "tests/attacks/test_lease_attacks.py::test_a_project_config_cannot_mint_from_a_role_the_settings_do_not_allow",
        ),
    ),
    Protection(
        "a minted database login's lease is cut to the window, whatever the role's own lease",
        "providers/hashicorp_database.py",
        "            ends_at = self.renew(lease_id, seconds)\n",
        "            ends_at = datetime.now(UTC) + timedelta(hours=1)\n",
        ("tests/attacks/test_lease_attacks.py::test_a_project_config_cannot_make_a_login_outlive_its_window",),
    ),
    Protection(
        "revoking a window revokes the credentials minted under it",
        "broker/core.py",
        '        await self.leases.end_windows([window.id], "window revoked")\n',
        "",
        (
            "tests/broker/test_leases.py::"
            "test_an_approved_read_mints_a_login_whose_lease_is_the_window_and_grants_revoke_ends_it",
            "tests/frontdoor/test_lease_e2e.py::test_get_secret_mints_a_login_the_page_dates_and_grants_revoke_ends",
        ),
    ),
    Protection(
        "a broker revokes at start the leases a stopped broker left past their window",
        "broker/leases.py",
        "        await self.sweep()  # leases past their window, left by a broker that stopped\n",
        "",
        ("tests/broker/test_leases.py::test_a_restarted_broker_revokes_a_lease_left_past_its_window",),
    ),
    Protection(
        "rotating a minted secret (agent-vault rotate, Mark as leaked, onLeak = rotate) revokes every open lease "
        "of it, not only those of the windows it ends",
        "broker/rotation.py",
        '        count = await self.leases.revoke_secret(vault, name, f"rotated: {why}", workspace=ws.key)\n',
        "        count = 0\n",
        (
            "tests/broker/test_rotation_leases.py::test_rotating_a_minted_secret_revokes_its_logins_and_writes_nothing",
            "tests/broker/test_rotation_leases.py::test_on_leak_rotate_of_a_minted_secret_revokes_every_login_of_it",
        ),
    ),
    Protection(
        "a value an upstream sends back through the proxy is a leak: the windows that let it flow end",
        "broker/proxy_gate.py",
        "closed = [await self.leaks.contain(held.session.workspace, v, [n], how) for held, v, n in leaked]",
        "closed = []",
        (
            "tests/proxy/test_scrub_leak.py::"
            "test_a_value_an_upstream_sends_back_closes_its_window_and_the_alert_offers_rotation",
        ),
    ),
    Protection(
        "a value an upstream sends back through the proxy sets off the leak alert (and onLeak = rotate)",
        "broker/proxy_gate.py",
        "            await self.leaks.report(held.session, secret_vault, [name], seen)\n",
        "            pass\n",
        (
            "tests/proxy/test_scrub_leak.py::"
            "test_a_value_an_upstream_sends_back_closes_its_window_and_the_alert_offers_rotation",
            "tests/proxy/test_scrub_leak.py::test_on_leak_rotate_asks_for_a_rotation_when_an_upstream_sends_the_value_back",
        ),
    ),
    Protection(
        "a rotate.command runs outside the project directory, so nothing an agent planted there is what it runs",
        "broker/rotation.py",
        "                COMMAND_DIR, timeout=float(rotate.timeout), base_env=base_env,\n",
        "                ws.vault(vault).base_dir, timeout=float(rotate.timeout), base_env=base_env,\n",
        (
            "tests/attacks/test_rotation_attacks.py::"
            "test_a_module_planted_in_the_project_is_not_what_an_allowed_rotate_command_runs",
        ),
    ),
    Protection(
        "rotating a minted secret revokes only the leases of the project that asked",
        "broker/rotation.py",
        'f"rotated: {why}", workspace=ws.key)',
        'f"rotated: {why}")',
        (
            "tests/attacks/test_rotation_attacks.py::"
            "test_rotating_a_minted_secret_in_one_project_leaves_another_projects_logins_alone",
        ),
    ),
    Protection(
        "the console's Mark as leaked needs a signed-in approver",
        "web/dashboard.py",
        'approval page."""\n        if not self.app.signed_in(request):\n',
        'approval page."""\n        if False:\n',
        (
            "tests/attacks/test_rotation_attacks.py::"
            "test_the_agent_cannot_use_on_leak_to_rotate_without_a_human_nor_mark_a_secret_as_leaked",
        ),
    ),
    Protection(
        "a login minted for a command without a window is revoked when the command finishes",
        "broker/delivery.py",
        "await self.leases.end_request(request_id, COMMAND_FINISHED)",
        "pass",
        ("tests/broker/test_leases.py::test_a_command_gets_a_minted_login_that_ends_with_the_command",),
    ),
    Protection(
        "a grouped window lookup serves only the reads that asked before it started (a revocation is seen)",
        "broker/rounds.py",
        "                for (_, done), outcome in zip(group, outcomes, strict=True):\n",
        "                late, self._waiting = self._waiting, []  # late arrivals ride on this round's answer\n"
        "                group, outcomes = group + late, outcomes + outcomes[-1:] * len(late)\n"
        "                for (_, done), outcome in zip(group, outcomes, strict=True):\n",
        (
            "tests/broker/test_replicas.py::"
            "test_a_read_sees_a_revocation_made_while_an_earlier_window_lookup_was_under_way",
        ),
    ),
    Protection(
        "after a listing's row (written behind its answer) fails, the next listing waits for its row",
        "broker/recorder.py",
        "            self._behind_failed = True\n",
        "",
        (
            "tests/broker/test_core.py::"
            "test_a_listing_row_is_written_before_any_later_row_and_a_failed_one_fails_closed",
        ),
    ),
    Protection(
        "a row committed on the broker's event loop never waits for another writer's lock (the broker would "
        "stand still for every agent and page until it is released): it goes to a worker thread instead",
        "store/audit.py",
        '            conn.execute("PRAGMA busy_timeout = 0")\n',
        "",
        (
            "tests/broker/test_group_commit.py::test_a_lone_row_the_log_cannot_take_at_once_waits_off_the_loop",
            "tests/attacks/test_audit_lock.py",
        ),
    ),
    Protection(
        "an audit row is on disk before it counts as written: the log syncs the WAL file after the commit "
        "(SQLite itself does not: synchronous = NORMAL)",
        "store/audit.py",
        "                    os.fdatasync(fd)\n",
        "",
        (
            "tests/store/test_audit_sync.py::"
            "test_an_appended_row_is_synced_to_disk_after_its_commit_and_before_append_returns",
            "tests/broker/test_group_commit.py::test_no_value_waits_on_a_row_its_fsync_has_not_reached",
        ),
    ),
    Protection(
        "rows committed on the broker's event loop release their values only after the fsync that covers them",
        "store/audit.py",
        "        await asyncio.shield(syncing)\n",
        "        pass\n",
        ("tests/broker/test_group_commit.py::test_no_value_waits_on_a_row_its_fsync_has_not_reached",),
    ),
    Protection(
        "after the disk refused a sync the audit log writes no more rows (what it holds since is unknown)",
        "store/audit.py",
        "if self._sync_failed is not None:  # what the disk holds since is unknown: write nothing more",
        "if False:",
        ("tests/store/test_audit_sync.py::test_a_refused_sync_stops_the_log_from_taking_rows",),
    ),
    Protection(
        "a WAL file deleted under the broker is noticed: no value leaves on a row written into it",
        "store/audit.py",
        "if _deleted(fd):  # synced into a file that is gone: its rows are not on disk to stay",
        "if False:",
        ("tests/attacks/test_audit_wal.py",),
    ),
    Protection(
        "the zeros that write the WAL file out at the broker's start go through no link planted in its place",
        "store/audit.py",
        'getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))',
        'getattr(os, "O_CLOEXEC", 0))',
        (
            "tests/attacks/test_audit_wal.py::"
            "test_zeros_meant_for_the_wal_file_never_go_through_a_link_planted_in_its_place",
        ),
    ),
    Protection(
        "a named pipe planted as the WAL file does not hold the broker's start",
        "store/audit.py",
        "fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK |",
        "fd = os.open(path, os.O_WRONLY |",
        ("tests/attacks/test_audit_wal.py::test_a_fifo_planted_as_the_wal_file_does_not_hold_the_brokers_start",),
    ),
    Protection(
        "a remembered read of state.db (factors, approvers, approvals, open windows) is dropped when another "
        "process commits (a window revoked by hand is not answered from memory)",
        "store/sqlite.py",
        'version = (self._db.execute("PRAGMA data_version").fetchone()[0], self._db.total_changes)',
        "version = (0, self._db.total_changes)",
        (
            "tests/store/test_factor_engines.py::test_factor_rows_another_process_changes_are_read_again_at_once",
            "tests/store/test_state_engines.py::test_windows_another_process_changes_are_read_again_at_once",
        ),
    ),
    Protection(
        "the PostgreSQL log's rows are quoted by psycopg (ClientCursor), never pasted into the query that appends "
        "and commits them: an agent's reason, client name or detail cannot end the statement or add one",
        "store/postgres_audit.py",
        "                bound.execute(statement, values)\n",
        '                conn.execute(statement.replace("%s", "{}").format(*[("\'" + v + "\'") if isinstance(v, str) '
        'else ("NULL" if v is None else str(v)) for v in values or []]).encode())\n',
        ("tests/attacks/test_audit_sql_text.py::test_text_made_to_break_out_of_its_quotes_is_stored_as_written",),
    ),
    Protection(
        "every PostgreSQL audit connection commits durably, whatever the database's or role's default "
        "(synchronous_commit = off would acknowledge a row a crash then loses)",
        "store/postgres_audit.py",
        "\" WHERE current_setting('synchronous_commit') = 'off'\"",
        '" WHERE false"',
        ("tests/store/test_audit_engines.py::test_commits_are_durable_whatever_the_database_default",),
    ),
    Protection(
        "the same on the broker's event loop (`append_async`): its rows are quoted by psycopg, never pasted in",
        "store/postgres_audit.py",
        "            await bound.execute(statement, values)\n",
        '            await conn.execute(statement.replace("%s", "{}").format(*[("\'" + v + "\'") if isinstance(v, str) '
        'else ("NULL" if v is None else str(v)) for v in values or []]).encode())\n',
        ("tests/attacks/test_audit_sql_text.py::test_text_made_to_break_out_of_its_quotes_is_stored_as_written",),
    ),
    Protection(
        "a window ended is not answered from the open windows state.db remembers (store/sqlite.py)",
        "store/sqlite.py",
        "return [w for w in windows if w.ends_at > now]",
        "return list(windows)",
        (
            "tests/store/test_state_engines.py::test_windows_are_read_as_they_are_at_each_moment_asked",
            "tests/store/test_state_engines.py::test_active_windows_filter_by_time_workspace_and_vault",
        ),
    ),
    Protection(
        "a remembered read of state.db is dropped when the broker itself writes (a factor added, a step used)",
        "store/sqlite.py",
        'version = (self._db.execute("PRAGMA data_version").fetchone()[0], self._db.total_changes)',
        'version = (self._db.execute("PRAGMA data_version").fetchone()[0], 0)',
        ("tests/store/test_factor_engines.py::test_factors_are_added_listed_and_removed",),
    ),
    Protection(
        "an approval hands values to the waiting agent only when they are the agent's (a read): a write releases "
        "no current value, a command's values go to the command",
        "broker/decisions.py",
        '        if live is None or live.waiting == 0 or req.action != "read":\n',
        "        if live is None or live.waiting == 0:\n",
        (
            "tests/attacks/test_handover.py::test_a_write_approved_while_the_agent_waits_hands_it_no_current_value",
            "tests/attacks/test_handover.py::test_a_command_approved_while_the_agent_waits_hands_it_no_value",
        ),
    ),
    Protection(
        "a proxied call's approval is the proxy's: no session's wait takes its value",
        "broker/delivery.py",
        '        if "proxy_call" in req.extra:  # decided for the proxy',
        "        if False:  # decided for the proxy",
        ("tests/attacks/test_handover.py::test_await_approval_on_a_proxy_calls_request_releases_nothing_to_the_agent",),
    ),
)
