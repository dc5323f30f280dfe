// @ts-check
/**
 * The station operator's page: log in, see today's and upcoming activities of
 * the site, join the live one in one click, follow live notices (activities
 * opening, directives to acknowledge, alerts).
 */

import { api, el, ensureLogin, follow, initLanguage, showLive, tr } from "./command-common.js";
import { rememberToken } from "./ui.js";

/** Rooms open ten minutes before the start (the scheduler's runner). */
const OPEN_LEAD_MS = 10 * 60 * 1000;

/** @type {any[]} */
let sessions = [];
/** @type {any[]} newest first */
const notices = [];
/** @type {Set<number>} */
const acknowledged = new Set();
let site = "";

/** @param {string} iso */
function shortTime(iso) {
    return iso.slice(5, 16).replace("T", " ");
}

function renderSessions() {
    const list = /** @type {HTMLElement} */ (document.getElementById("sessions"));
    if (!sessions.length) {
        list.replaceChildren(el("li", tr("sessions.none"), "hint"));
        return;
    }
    const now = Date.now();
    list.replaceChildren(
        ...sessions.map((s) => {
            const item = el("li", undefined, "session-card");
            const text = el("div");
            text.append(el("strong", s.title), el("div", `${s.theme_label} · ${shortTime(s.start)}–${s.end.slice(11, 16)}`, "when"));
            const open = now >= Date.parse(s.start) - OPEN_LEAD_MS && now < Date.parse(s.end);
            const button = el("button", tr(open ? "sessions.join" : "sessions.notOpen"), open ? "primary" : "");
            button.type = "button";
            button.disabled = !open;
            button.setAttribute("aria-label", `${tr("sessions.join")}: ${s.title}`);
            button.addEventListener("click", () => join(s.session_id, button));
            item.append(text, button);
            return item;
        }),
    );
}

/** @param {number} id @param {HTMLButtonElement} button */
async function join(id, button) {
    button.disabled = true;
    try {
        const result = await api(`/api/sessions/${id}/join`, { method: "POST" });
        // the token stays out of every URL: this tab keeps it for the station page
        rememberToken(result.room, result.token);
        location.href = result.url;
    } catch (error) {
        button.disabled = false;
        showError(error);
    }
}

/** @param {any} notice */
function noticeText(notice) {
    switch (notice.type) {
        case "session.opening":
            return tr("notice.opening", { title: notice.title, start: shortTime(notice.start) });
        case "directive":
            return tr("notice.directive", { title: notice.title });
        case "escalation":
            return tr("notice.escalation", { site: notice.site_name, title: notice.title });
        default:
            return String(notice.title || notice.type);
    }
}

function renderNotices() {
    const list = /** @type {HTMLElement} */ (document.getElementById("notices"));
    if (!notices.length) {
        list.replaceChildren(el("li", tr("notices.none"), "hint"));
        return;
    }
    list.replaceChildren(
        ...notices.map((n) => {
            const item = el("li", undefined, "notice");
            item.dataset.type = n.type;
            item.append(el("strong", noticeText(n)));
            if (n.type === "directive") {
                if (n.text) item.append(el("p", n.text));
                const done = acknowledged.has(n.id);
                const button = el("button", tr(done ? "notice.acked" : "notice.ack"));
                button.type = "button";
                button.disabled = done;
                button.dataset.directive = String(n.id);
                button.setAttribute("aria-label", `${tr("notice.ack")}: ${n.title}`);
                button.addEventListener("click", () => acknowledge(n.id));
                const actions = el("div", undefined, "actions");
                actions.append(button);
                item.append(actions);
            }
            return item;
        }),
    );
}

/** @param {number} id */
async function acknowledge(id) {
    try {
        await api(`/api/directives/${id}/ack`, { method: "POST" });
        acknowledged.add(id);
        renderNotices();
    } catch (error) {
        showError(error);
    }
}

/** @param {any} notice */
function addNotice(notice) {
    if (notice.type === "directive" && notices.some((n) => n.type === "directive" && n.id === notice.id)) return;
    notices.unshift(notice);
    notices.splice(50);
    renderNotices();
}

async function loadSessions() {
    sessions = await api(`/api/sites/${encodeURIComponent(site)}/sessions`);
    renderSessions();
}

function showError(/** @type {unknown} */ error) {
    const banner = /** @type {HTMLElement} */ (document.getElementById("banner"));
    banner.textContent = tr("error.generic", { reason: String(error instanceof Error ? error.message : error) });
    banner.hidden = false;
}

async function main() {
    initLanguage(() => {
        renderSessions();
        renderNotices();
    });
    const account = await ensureLogin();
    if (!account.site) {
        showError(tr("sessions.noSite"));
        return;
    }
    site = account.site;
    const info = await api(`/api/sites/${encodeURIComponent(site)}`);
    /** @type {HTMLElement} */ (document.getElementById("site-name")).textContent = info.name;
    /** @type {HTMLElement} */ (document.getElementById("app")).hidden = false;
    for (const d of (await api("/api/directives")).reverse()) {
        if (d.unread.includes(site)) addNotice(d);
        else if (site in d.read) acknowledged.add(d.id);
    }
    renderNotices();
    await loadSessions();
    follow(
        "/api/notices/stream",
        {
            "session.opening": (n) => {
                addNotice(n);
                loadSessions().catch(showError);
            },
            directive: addNotice,
            escalation: addNotice,
        },
        showLive,
    );
    // Join buttons enable themselves when a room opens, even without a notice.
    setInterval(renderSessions, 30000);
}

main().catch(showError);
