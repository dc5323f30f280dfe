// @ts-check
/**
 * The administration page: after one login, everything a county runs without the
 * command line — the site tree (add, edit, move, remove, CSV in and out, the shipped
 * county in one click), accounts (create, reset a password, disable), activities
 * (schedule, edit, cancel, open the console, end now, attendance) and ad-hoc
 * meetings. An institute operator sees the same page within its own subtree; what a
 * button does is always checked again by the API.
 */

import { HttpError, api, ensureLogin, initLanguage, tr, upload } from "./command-common.js";
import { THEMES, themeLabel } from "./library.js";
import { byId, el, rememberToken } from "./ui.js";

/**
 * @typedef {{code: string, name: string, kind: 'center' | 'institute' | 'station', parent: string | null,
 *            region: string, contact_name: string, contact_phone: string}} Site
 * @typedef {{id: number, username: string, role: string, site: string | null, disabled: boolean}} Account
 * @typedef {{id: number, title: string, theme: string, theme_label: string, host: string,
 *            audience: {kind: string, codes: string[]}, start: string, end: string,
 *            recurrence: {repeat: string, weekdays: number[], until: string | null, count: number | null},
 *            options: {record: boolean, publish: boolean, live_households: boolean, restream_urls: string[], layout: string},
 *            status: string}} Session
 */

/** @type {Account | null} */
let me = null;
/** @type {Site[]} parents before children */
let sites = [];
/** @type {Map<string, Site>} */
let byCode = new Map();
/** @type {Session[]} */
let sessions = [];
/** @type {Account[]} */
let accounts = [];
/** @type {number | null} the session the form edits (null: a new one) */
let editingSession = null;
/** @type {string | null} the site the form edits (null: a new one) */
let editingSite = null;

const sessionForm = /** @type {HTMLFormElement} */ (byId("session-form"));
const siteForm = /** @type {HTMLFormElement} */ (byId("site-form"));
const accountForm = /** @type {HTMLFormElement} */ (byId("account-form"));

// ---- messages -----------------------------------------------------------------------------

/** @param {unknown} error */
function showError(error) {
    const banner = byId("banner");
    banner.textContent = tr("error.generic", { reason: String(error instanceof Error ? error.message : error) });
    banner.hidden = false;
    byId("notice").hidden = true;
}

/** @param {string} text */
function showNotice(text) {
    const notice = byId("notice");
    notice.textContent = text;
    notice.hidden = false;
    byId("banner").hidden = true;
}

/**
 * Runs an action of a button, showing its failure; the button is disabled meanwhile.
 * @param {HTMLButtonElement | null} button
 * @param {() => Promise<void>} action
 */
async function act(button, action) {
    if (button) button.disabled = true;
    try {
        await action();
    } catch (error) {
        showError(error);
    } finally {
        if (button) button.disabled = false;
    }
}

/** @param {string} iso an offset time as the API gives it @returns {string} "2026-12-06 09:00" */
function shortTime(iso) {
    return iso.slice(0, 16).replace("T", " ");
}

/** @param {string} code */
function siteName(code) {
    return byCode.get(code)?.name || code;
}

const isCenter = () => me?.role === "center_admin";

/** The sites the caller acts within: everything for the center, its subtree for an institute. */
function scope() {
    if (isCenter() || !me?.site) return sites;
    const home = me.site;
    return sites.filter((s) => s.code === home || isWithin(s.code, home));
}

/** @param {string} code @param {string} root */
function isWithin(code, root) {
    for (let site = byCode.get(code); site; site = site.parent ? byCode.get(site.parent) : undefined) {
        if (site.code === root) return true;
    }
    return false;
}

/**
 * @param {HTMLSelectElement} select
 * @param {{value: string, label: string}[]} options
 * @param {string} [selected]
 */
function fillSelect(select, options, selected) {
    const keep = selected ?? select.value;
    select.replaceChildren(...options.map((o) => new Option(o.label, o.value, false, o.value === keep)));
}

/** @param {Site} site */
function siteOption(site) {
    return { value: site.code, label: `${site.name}（${site.code}）` };
}

// ---- tabs ---------------------------------------------------------------------------------

const TABS = ["sessions", "sites", "accounts", "me"];

/** @param {string} name */
function selectTab(name) {
    for (const tab of TABS) {
        byId(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
        byId(`panel-${tab}`).hidden = tab !== name;
    }
}

for (const tab of TABS) byId(`tab-${tab}`).addEventListener("click", () => selectTab(tab));

// ---- sites ----------------------------------------------------------------------------------

async function loadSites() {
    sites = await api("/api/sites");
    byCode = new Map(sites.map((s) => [s.code, s]));
    byId("setup").hidden = !(isCenter() && sites.length === 0);
    renderSites();
    renderSessionChoices();
    renderAccountChoices();
    fillSelect(
        /** @type {HTMLSelectElement} */ (byId("invite-site")),
        sites.filter((s) => s.kind !== "center").map(siteOption),
    );
}

function renderSites() {
    const tree = byId("site-tree");
    if (!sites.length) {
        tree.replaceChildren(el("p", { class: "hint", text: tr("sites.none") }));
        return;
    }
    /** @param {Site} site */
    const row = (site) =>
        el("li", { class: "site-row", "data-code": site.code }, [
            el("span", { text: `${site.name}（${site.code}）` }),
            el("span", { class: "hint", text: [tr(`kind.${site.kind}`), site.region].filter(Boolean).join(" · ") }),
            el("button", {
                type: "button",
                "data-edit-site": site.code,
                "aria-label": `${tr("sites.edit")} ${site.name}`,
                text: tr("sites.edit"),
            }),
        ]);
    const children = (/** @type {string} */ code) => sites.filter((s) => s.parent === code);
    const top = sites.filter((s) => !s.parent || !byCode.has(s.parent));
    const blocks = [];
    for (const root of top) {
        blocks.push(el("ul", { class: "plain" }, [row(root)]));
        for (const group of children(root.code)) {
            const stations = children(group.code);
            blocks.push(
                el("details", { class: "group", open: !isCenter() }, [
                    el("summary", {}, [group.name, " ", el("span", { class: "count", text: `（${group.code} · ${stations.length}）` })]),
                    el("ul", { class: "plain" }, [row(group), ...stations.map(row)]),
                ]),
            );
        }
    }
    tree.replaceChildren(...blocks);
}

byId("site-tree").addEventListener("click", (event) => {
    const button = /** @type {HTMLElement} */ (event.target).closest("[data-edit-site]");
    if (button) openSiteForm(byCode.get(button.getAttribute("data-edit-site") || "") || null);
});

/** @param {Site | null} site null: a new one */
function openSiteForm(site) {
    editingSite = site ? site.code : null;
    siteForm.reset();
    byId("site-form-h").textContent = tr(site ? "sites.edit" : "sites.add");
    const code = /** @type {HTMLInputElement} */ (siteForm.elements.namedItem("code"));
    code.readOnly = !!site;
    const parents = scope().filter((s) => s.kind !== "station" && s.code !== site?.code);
    fillSelect(/** @type {HTMLSelectElement} */ (byId("site-parent")), [{ value: "", label: "—" }, ...parents.map(siteOption)]);
    if (site) {
        for (const name of ["code", "name", "kind", "region", "contact_name", "contact_phone"]) {
            /** @type {HTMLInputElement} */ (siteForm.elements.namedItem(name)).value = String(site[/** @type {keyof Site} */ (name)] ?? "");
        }
        /** @type {HTMLSelectElement} */ (byId("site-parent")).value = site.parent || "";
    } else if (!isCenter() && me?.site) {
        /** @type {HTMLSelectElement} */ (byId("site-parent")).value = me.site;
    }
    byId("site-delete").hidden = !site;
    siteForm.hidden = false;
    /** @type {HTMLInputElement} */ (siteForm.elements.namedItem(site ? "name" : "code")).focus();
}

byId("add-site").addEventListener("click", () => openSiteForm(null));
byId("site-form-cancel").addEventListener("click", () => (siteForm.hidden = true));

siteForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(siteForm);
    const field = (/** @type {string} */ name) => String(data.get(name) || "").trim();
    const body = {
        name: field("name"),
        kind: field("kind"),
        parent: field("parent") || null,
        region: field("region"),
        contact_name: field("contact_name"),
        contact_phone: field("contact_phone"),
    };
    void act(/** @type {HTMLButtonElement} */ (/** @type {SubmitEvent} */ (event).submitter), async () => {
        if (editingSite) await api(`/api/sites/${encodeURIComponent(editingSite)}`, { method: "PATCH", body });
        else await api("/api/sites", { method: "POST", body: { code: field("code"), ...body } });
        siteForm.hidden = true;
        await loadSites();
        showNotice(tr("sites.saved", { name: body.name }));
    });
});

byId("site-delete").addEventListener("click", (event) => {
    const code = editingSite;
    if (!code || !window.confirm(tr("sites.deleteConfirm", { name: siteName(code) }))) return;
    void act(/** @type {HTMLButtonElement} */ (event.currentTarget), async () => {
        const name = siteName(code);
        await api(`/api/sites/${encodeURIComponent(code)}`, { method: "DELETE" });
        siteForm.hidden = true;
        await loadSites();
        showNotice(tr("sites.deleted", { name }));
    });
});

byId("import-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = /** @type {HTMLFormElement} */ (event.currentTarget);
    void act(/** @type {HTMLButtonElement} */ (/** @type {SubmitEvent} */ (event).submitter), async () => {
        try {
            const result = await upload("/api/sites/import", new FormData(form));
            form.reset();
            await loadSites();
            showNotice(tr("sites.imported", { n: result.imported }));
        } catch (error) {
            throw new Error(tr("sites.importErrors", { reason: String(error instanceof Error ? error.message : error) }));
        }
    });
});

byId("setup-import").addEventListener("click", () => {
    selectTab("sites");
    /** @type {HTMLInputElement} */ (byId("import-form").querySelector('input[type="file"]')).focus();
});

byId("seed").addEventListener("click", (event) => {
    void act(/** @type {HTMLButtonElement} */ (event.currentTarget), async () => {
        const result = await api("/api/sites/seed", { method: "POST" });
        await loadSites();
        showNotice(tr("setup.seeded", { added: result.added, sites: result.sites }));
    });
});

// ---- accounts ---------------------------------------------------------------------------------

const ROLE_KIND = /** @type {Record<string, string | null>} */ ({
    center_admin: null,
    institute_operator: "institute",
    station_operator: "station",
});

function renderAccountChoices() {
    const roles = isCenter() ? Object.keys(ROLE_KIND) : ["station_operator"];
    const roleSelect = /** @type {HTMLSelectElement} */ (byId("account-role"));
    fillSelect(roleSelect, roles.map((r) => ({ value: r, label: tr(/** @type {any} */ (`role.${r}`)) })), roleSelect.value || "station_operator");
    const kind = ROLE_KIND[roleSelect.value];
    byId("account-site-label").hidden = kind === null;
    fillSelect(
        /** @type {HTMLSelectElement} */ (byId("account-site")),
        scope()
            .filter((s) => s.kind === kind)
            .map(siteOption),
    );
}

byId("account-role").addEventListener("change", renderAccountChoices);

async function loadAccounts() {
    accounts = await api("/api/accounts");
    renderAccounts();
}

function renderAccounts() {
    byId("account-rows").replaceChildren(
        ...accounts.map((a) =>
            el("tr", { "data-account": a.id, "data-username": a.username }, [
                el("th", { class: "site-name", text: a.username }),
                el("td", { text: tr(/** @type {any} */ (`role.${a.role}`)) }),
                el("td", { text: a.site ? siteName(a.site) : "—" }),
                el("td", { text: tr(a.disabled ? "accounts.disabled" : "accounts.enabled") }),
                el("td", { class: "actions" }, [
                    el("button", {
                        type: "button",
                        "data-reset": a.id,
                        "aria-label": `${tr("accounts.reset")} ${a.username}`,
                        text: tr("accounts.reset"),
                    }),
                    a.id !== me?.id &&
                        el("button", {
                            type: "button",
                            "data-disable": a.id,
                            "data-to": String(!a.disabled),
                            "aria-label": `${tr(a.disabled ? "accounts.enable" : "accounts.disable")} ${a.username}`,
                            text: tr(a.disabled ? "accounts.enable" : "accounts.disable"),
                        }),
                ]),
            ]),
        ),
    );
}

byId("account-rows").addEventListener("click", (event) => {
    const target = /** @type {HTMLElement} */ (event.target);
    const reset = target.closest("[data-reset]");
    const disable = target.closest("[data-disable]");
    const confirmReset = target.closest("[data-confirm-reset]");
    if (reset) {
        const cell = /** @type {HTMLElement} */ (reset.parentElement);
        if (cell.querySelector("input")) return;
        const id = reset.getAttribute("data-reset") || "";
        cell.append(
            el("label", {}, [
                el("span", { text: tr("accounts.newPassword") }),
                el("input", { type: "password", minlength: 10, autocomplete: "new-password", "data-password-for": id }),
            ]),
            el("button", { type: "button", class: "primary", "data-confirm-reset": id, text: tr("sites.save") }),
        );
        /** @type {HTMLInputElement} */ (cell.querySelector("input")).focus();
    } else if (confirmReset) {
        const id = confirmReset.getAttribute("data-confirm-reset") || "";
        const input = /** @type {HTMLInputElement} */ (byId("account-rows").querySelector(`[data-password-for="${id}"]`));
        const account = accounts.find((a) => String(a.id) === id);
        void act(/** @type {HTMLButtonElement} */ (confirmReset), async () => {
            await api(`/api/accounts/${id}/password`, { method: "POST", body: { password: input.value } });
            showNotice(tr("accounts.resetDone", { user: account?.username || id }));
            renderAccounts();
        });
    } else if (disable) {
        const id = disable.getAttribute("data-disable") || "";
        void act(/** @type {HTMLButtonElement} */ (disable), async () => {
            await api(`/api/accounts/${id}`, { method: "PATCH", body: { disabled: disable.getAttribute("data-to") === "true" } });
            await loadAccounts();
        });
    }
});

accountForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(accountForm);
    const role = String(data.get("role"));
    const body = {
        username: String(data.get("username") || "").trim(),
        password: String(data.get("password") || ""),
        role,
        site: ROLE_KIND[role] === null ? null : String(data.get("site") || ""),
    };
    void act(/** @type {HTMLButtonElement} */ (/** @type {SubmitEvent} */ (event).submitter), async () => {
        await api("/api/accounts", { method: "POST", body });
        accountForm.reset();
        renderAccountChoices();
        await loadAccounts();
        showNotice(tr("accounts.created", { user: body.username }));
    });
});

// ---- my account -------------------------------------------------------------------------------

byId("password-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = /** @type {HTMLFormElement} */ (event.currentTarget);
    const data = new FormData(form);
    if (data.get("new") !== data.get("repeat")) {
        showError(tr("me.mismatch"));
        return;
    }
    void act(/** @type {HTMLButtonElement} */ (/** @type {SubmitEvent} */ (event).submitter), async () => {
        await api("/api/me/password", {
            method: "POST",
            body: { old_password: String(data.get("old")), new_password: String(data.get("new")) },
        });
        form.reset();
        showNotice(tr("me.done"));
    });
});

// ---- sessions ---------------------------------------------------------------------------------

const audienceSelect = /** @type {HTMLSelectElement} */ (byId("session-audience"));
const repeatSelect = /** @type {HTMLSelectElement} */ (byId("session-repeat"));
/** @type {Set<string>} codes ticked in the audience picker */
let picked = new Set();

function renderSessionChoices() {
    fillSelect(
        /** @type {HTMLSelectElement} */ (byId("session-theme")),
        THEMES.map((theme) => ({ value: theme, label: themeLabel(theme) })),
    );
    fillSelect(/** @type {HTMLSelectElement} */ (byId("session-host")), scope().map(siteOption), me?.site || sites[0]?.code);
    byId("weekday-boxes").replaceChildren(
        ...[0, 1, 2, 3, 4, 5, 6].map((day) =>
            el("label", { class: "check" }, [
                el("input", { type: "checkbox", name: "weekday", value: day }),
                tr(/** @type {any} */ (`session.weekday.${day}`)),
            ]),
        ),
    );
    renderPicker();
}

function renderPicker() {
    const kind = audienceSelect.value;
    byId("audience-picker").hidden = kind === "everyone";
    const filter = /** @type {HTMLInputElement} */ (byId("audience-filter")).value.trim();
    const choices = scope().filter(
        (s) => (kind === "subtrees" ? s.kind !== "station" : true) && (!filter || s.name.includes(filter) || s.code.includes(filter)),
    );
    byId("audience-sites").replaceChildren(
        ...choices.map((s) =>
            el("label", { class: "check" }, [
                el("input", { type: "checkbox", value: s.code, checked: picked.has(s.code), "data-pick": s.code }),
                `${s.name}（${s.code}）`,
            ]),
        ),
    );
}

audienceSelect.addEventListener("change", renderPicker);
byId("audience-filter").addEventListener("input", renderPicker);
byId("audience-sites").addEventListener("change", (event) => {
    const box = /** @type {HTMLInputElement} */ (event.target);
    if (box.checked) picked.add(box.value);
    else picked.delete(box.value);
});

function renderRepeat() {
    byId("weekdays").hidden = repeatSelect.value !== "weekly";
    byId("until-label").hidden = repeatSelect.value === "none";
}

repeatSelect.addEventListener("change", renderRepeat);

/** @param {Session | null} session null: a new one */
function openSessionForm(session) {
    editingSession = session ? session.id : null;
    sessionForm.reset();
    renderSessionChoices();
    byId("session-form-h").textContent = tr(session ? "session.edit" : "session.new");
    /** @param {string} name @param {string} value */
    const set = (name, value) => {
        /** @type {HTMLInputElement} */ (sessionForm.elements.namedItem(name)).value = value;
    };
    /** @param {string} name @param {boolean} value */
    const tick = (name, value) => {
        /** @type {HTMLInputElement} */ (sessionForm.elements.namedItem(name)).checked = value;
    };
    picked = new Set(session ? session.audience.codes : []);
    if (session) {
        set("title", session.title);
        set("theme", session.theme);
        set("host", session.host);
        audienceSelect.value = session.audience.kind;
        set("start", session.start.slice(0, 16));
        set("end", session.end.slice(0, 16));
        repeatSelect.value = session.recurrence.repeat;
        set("until", session.recurrence.until || "");
        for (const box of sessionForm.querySelectorAll('input[name="weekday"]')) {
            const input = /** @type {HTMLInputElement} */ (box);
            input.checked = session.recurrence.weekdays.includes(Number(input.value));
        }
        tick("record", session.options.record);
        tick("publish", session.options.publish);
        tick("live_households", session.options.live_households);
        set("layout", session.options.layout);
        set("restream", session.options.restream_urls.join("\n"));
    } else {
        audienceSelect.value = isCenter() ? "everyone" : "subtrees";
        if (!isCenter() && me?.site) picked.add(me.site);
    }
    renderPicker();
    renderRepeat();
    sessionForm.hidden = false;
    /** @type {HTMLInputElement} */ (sessionForm.elements.namedItem("title")).focus();
}

byId("new-session").addEventListener("click", () => openSessionForm(null));
byId("session-form-cancel").addEventListener("click", () => (sessionForm.hidden = true));

sessionForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(sessionForm);
    const text = (/** @type {string} */ name) => String(data.get(name) || "").trim();
    const kind = audienceSelect.value;
    const repeat = repeatSelect.value;
    const body = {
        title: text("title"),
        theme: text("theme"),
        host: text("host"),
        audience: { kind, codes: kind === "everyone" ? [] : [...picked] },
        start: text("start"),
        end: text("end"),
        recurrence: {
            repeat,
            weekdays: repeat === "weekly" ? data.getAll("weekday").map(Number) : [],
            until: repeat !== "none" && text("until") ? text("until") : null,
        },
        options: {
            record: data.has("record"),
            publish: data.has("publish"),
            live_households: data.has("live_households"),
            layout: text("layout"),
            restream_urls: text("restream")
                .split("\n")
                .map((line) => line.trim())
                .filter(Boolean),
        },
    };
    void act(/** @type {HTMLButtonElement} */ (/** @type {SubmitEvent} */ (event).submitter), async () => {
        if (editingSession === null) await api("/api/sessions", { method: "POST", body });
        else await api(`/api/sessions/${editingSession}`, { method: "PUT", body });
        sessionForm.hidden = true;
        await loadSessions();
        showNotice(tr("session.saved", { title: body.title }));
    });
});

async function loadSessions() {
    sessions = await api("/api/sessions");
    renderSessions();
}

/** @param {Session} s */
function describeRepeat(s) {
    const rule = s.recurrence;
    if (rule.repeat === "none") return "";
    const days = rule.repeat === "weekly" ? ` ${rule.weekdays.map((d) => tr(/** @type {any} */ (`session.weekday.${d}`))).join("")}` : "";
    return ` · ${tr(/** @type {any} */ (`session.repeat.${rule.repeat}`))}${days}${rule.until ? ` → ${rule.until}` : ""}`;
}

/** Whether the caller may moderate and change a session: the center, or the institute hosting it. @param {Session} s */
function mayManage(s) {
    return isCenter() || (!!me?.site && isWithin(s.host, me.site));
}

function renderSessions() {
    const list = byId("session-list");
    if (!sessions.length) {
        list.replaceChildren(el("li", { class: "hint", text: tr("session.none") }));
        return;
    }
    list.replaceChildren(
        ...sessions.map((s) => {
            const cancelled = s.status === "cancelled";
            const badges = [
                s.options.record && tr("session.badge.record"),
                s.options.live_households && tr("session.badge.live"),
                s.options.publish && tr("session.badge.publish"),
                s.options.restream_urls.length > 0 && tr("session.badge.restream"),
                cancelled && tr("session.cancelled"),
            ].filter((b) => !!b);
            /** @param {string} action @param {string} key @param {boolean} [primary] */
            const button = (action, key, primary = false) =>
                el("button", {
                    type: "button",
                    class: primary ? "primary" : undefined,
                    "data-action": action,
                    "aria-label": `${tr(/** @type {any} */ (key))}: ${s.title}`,
                    text: tr(/** @type {any} */ (key)),
                });
            return el("li", { class: "session-card", "data-session": s.id }, [
                el("div", {}, [
                    el("strong", { text: s.title }),
                    el("div", {
                        class: "when",
                        text: `${themeLabel(s.theme)} · ${siteName(s.host)} · ${shortTime(s.start)}–${s.end.slice(11, 16)}${describeRepeat(s)}`,
                    }),
                    el("div", { class: "badges" }, badges.map((b) => el("span", { class: "badge", text: String(b) }))),
                ]),
                el(
                    "div",
                    { class: "actions row" },
                    cancelled || !mayManage(s)
                        ? [button("attendance", "session.attendance")]
                        : [
                              button("console", "session.console", true),
                              button("end", "session.endNow"),
                              button("edit", "session.editButton"),
                              button("attendance", "session.attendance"),
                              button("cancel", "session.cancel"),
                          ],
                ),
            ]);
        }),
    );
}

byId("session-list").addEventListener("click", (event) => {
    const button = /** @type {HTMLButtonElement | null} */ (/** @type {HTMLElement} */ (event.target).closest("[data-action]"));
    const card = /** @type {HTMLElement | null} */ (/** @type {HTMLElement} */ (event.target).closest("[data-session]"));
    if (!button || !card) return;
    const session = sessions.find((s) => String(s.id) === card.dataset.session);
    if (!session) return;
    const action = button.getAttribute("data-action");
    if (action === "edit") openSessionForm(session);
    else if (action === "attendance") location.href = `/attendance?session=${session.id}`;
    else if (action === "console") {
        void act(button, async () => {
            const grant = await api(`/api/sessions/${session.id}/console`, { method: "POST" });
            openConsole(grant);
        });
    } else if (action === "end" && window.confirm(tr("session.endConfirm", { title: session.title }))) {
        void act(button, async () => {
            await api(`/api/sessions/${session.id}/end`, { method: "POST" });
            showNotice(tr("session.ended", { title: session.title }));
        });
    } else if (action === "cancel" && window.confirm(tr("session.cancelConfirm", { title: session.title }))) {
        void act(button, async () => {
            await api(`/api/sessions/${session.id}/cancel`, { method: "POST" });
            await loadSessions();
        });
    }
}, true);

/**
 * Opens the console with a moderator's grant: the token stays in this tab, out of
 * every URL.
 * @param {{room: string, token: string, url: string}} grant
 */
function openConsole(grant) {
    rememberToken(grant.room, grant.token);
    location.href = grant.url;
}

// ---- ad-hoc meetings (the center) ------------------------------------------------------------

byId("adhoc-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const room = String(new FormData(/** @type {HTMLFormElement} */ (event.currentTarget)).get("room") || "").trim();
    void act(/** @type {HTMLButtonElement} */ (/** @type {SubmitEvent} */ (event).submitter), async () => {
        openConsole(await api(`/api/rooms/${encodeURIComponent(room)}/console`, { method: "POST" }));
    });
});

byId("invite-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(/** @type {HTMLFormElement} */ (event.currentTarget));
    const room = String(data.get("room") || "").trim();
    void act(/** @type {HTMLButtonElement} */ (/** @type {SubmitEvent} */ (event).submitter), async () => {
        const invite = await api(`/api/rooms/${encodeURIComponent(room)}/invite`, {
            method: "POST",
            body: { site: String(data.get("site") || "") },
        });
        const output = /** @type {HTMLInputElement} */ (byId("invite-link"));
        output.value = new URL(invite.url, location.href).href;
        byId("invite-output").hidden = false;
        output.select();
    });
});

// ---- start ------------------------------------------------------------------------------------

function renderAll() {
    if (!me) return;
    renderSites();
    renderSessionChoices();
    renderAccountChoices();
    renderAccounts();
    renderSessions();
    byId("who").textContent = tr("admin.who", { user: me.username, role: tr(/** @type {any} */ (`role.${me.role}`)) });
}

async function main() {
    initLanguage(renderAll);
    const account = await ensureLogin();
    me = account;
    if (account.role === "station_operator") {
        location.replace("/sessions");
        return;
    }
    byId("app").hidden = false;
    byId("who").hidden = false;
    byId("links").hidden = false;
    byId("logout").hidden = false;
    byId("library-link").hidden = !isCenter();
    byId("adhoc").hidden = !isCenter();
    await loadSites();
    await Promise.all([loadSessions(), loadAccounts()]);
    renderAll();
}

byId("logout").addEventListener("click", async () => {
    await api("/api/logout", { method: "POST" }).catch(() => undefined);
    location.href = "/";
});

main().catch((error) => {
    if (error instanceof HttpError && error.status === 403) showError(tr("error.forbidden", { reason: error.message }));
    else showError(error);
});
