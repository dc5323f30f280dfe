// @ts-check
/**
 * The landing page. Households: what is live now and what is coming (public
 * activities, by theme), one click to watch; the library. Staff: one login, then
 * their workspace (administration, or the station's activities). A fresh install
 * with no administrator says how to create one instead.
 */

import { initI18n, onLangChange, t } from "./i18n.js";
import { themeLabel } from "./library.js";
import { byId, el } from "./ui.js";

/**
 * @typedef {{room: string, title: string, theme: string, theme_label: string, host_name: string,
 *            start: string, end: string}} PublicSession
 */

/** @type {{live: PublicSession[], upcoming: PublicSession[]}} */
let programme = { live: [], upcoming: [] };
/** @type {{username: string, role: string} | null} */
let account = null;

/** @param {string} path */
async function getJson(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    return { ok: response.ok, status: response.status, body: response.ok ? await response.json() : null };
}

/** @param {string} iso */
function when(iso) {
    return iso.slice(5, 16).replace("T", " ");
}

/**
 * @param {PublicSession[]} sessions
 * @param {boolean} live
 */
function renderList(sessions, live) {
    if (!sessions.length) return [el("li", { class: "hint", text: t(live ? "landing.live.none" : "landing.upcoming.none") })];
    return sessions.map((s) =>
        el("li", { class: "programme-item", "data-room": s.room }, [
            el("div", {}, [
                el("strong", { text: s.title }),
                el("div", { class: "hint" }, [
                    el("span", { class: "badge", text: themeLabel(s.theme) }),
                    ` ${s.host_name} · ${when(s.start)}–${s.end.slice(11, 16)}`,
                ]),
            ]),
            live
                ? el("a", {
                      class: "button primary",
                      href: `/watch/${encodeURIComponent(s.room)}`,
                      "aria-label": `${t("landing.watchNow")}: ${s.title}`,
                      text: t("landing.watchNow"),
                  })
                : null,
        ]),
    );
}

function render() {
    byId("live-list").replaceChildren(...renderList(programme.live, true));
    byId("upcoming-list").replaceChildren(...renderList(programme.upcoming, false));
    if (account) {
        const workspace = /** @type {HTMLAnchorElement} */ (byId("workspace"));
        const station = account.role === "station_operator";
        workspace.href = station ? "/sessions" : "/admin";
        workspace.textContent = t(station ? "landing.toSessions" : "landing.toAdmin", { user: account.username });
    }
}

async function loadProgramme() {
    const found = await getJson("/api/public/sessions");
    if (found.ok) programme = found.body;
    render();
}

async function main() {
    initI18n();
    onLangChange(render);
    const [setup, me] = await Promise.all([getJson("/api/setup"), getJson("/api/me")]);
    if (setup.ok && !setup.body.admin_exists) byId("setup-needed").hidden = false;
    if (me.ok) {
        account = me.body;
        byId("login").hidden = true;
        byId("signed-in").hidden = false;
    }
    await loadProgramme();
    setInterval(() => void loadProgramme(), 30000);
}

byId("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = /** @type {HTMLFormElement} */ (event.currentTarget);
    const data = new FormData(form);
    const response = await fetch("/api/login", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        credentials: "same-origin",
        body: JSON.stringify({ username: data.get("username"), password: data.get("password") }),
    });
    const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
    if (!response.ok) {
        const message = byId("login-error");
        message.textContent = t("landing.loginFailed", { reason: String(body?.detail || response.statusText) });
        message.hidden = false;
        return;
    }
    location.href = body.account.role === "station_operator" ? "/sessions" : "/admin";
});

void main();
