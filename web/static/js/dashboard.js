// @ts-check
/**
 * The command dashboard: every site's state from a snapshot, then live changes
 * from /api/dashboard/stream. Rows are built once; a change patches only the
 * cells of the sites it lists, once per animation frame, so several hundred
 * sites stay smooth.
 */

import { api, el, ensureLogin, follow, HttpError, initLanguage, showLive, tr } from "./command-common.js";

/**
 * @typedef {{rtt_ms?: number, loss?: number, bitrate_kbps?: number}} Link
 * @typedef {{code: string, online: boolean, room: string | null, session: string | null,
 *            link: Link | null, speaking: boolean, name?: string, kind?: string,
 *            parent?: string | null}} SiteState
 * @typedef {{state: SiteState, row: HTMLElement, dot: HTMLElement, status: HTMLElement,
 *            session: HTMLElement, link: HTMLElement, name: string}} SiteRow
 */

/** @type {Map<string, SiteRow>} */
const rows = new Map();
/** @type {Map<string, SiteState>} */
const pending = new Map();
/** @type {Map<string, HTMLElement>} institute code → its summary counter */
const groupCounters = new Map();
let frame = 0;
/** @type {Map<number, any>} */
const directives = new Map();
/** @type {any} */
let statistics = null;

const treeEl = /** @type {HTMLElement} */ (document.getElementById("tree"));
const filterEl = /** @type {HTMLInputElement} */ (document.getElementById("filter"));
const onlyOnlineEl = /** @type {HTMLInputElement} */ (document.getElementById("only-online"));

/** @param {Link | null} link */
function linkText(link) {
    if (!link || link.rtt_ms === undefined) return tr("link.none");
    return tr("link.text", {
        rtt: Math.round(link.rtt_ms || 0),
        loss: ((link.loss || 0) * 100).toFixed(1),
        kbps: Math.round(link.bitrate_kbps || 0),
    });
}

/** @param {Link | null} link */
function linkLevel(link) {
    if (!link || link.rtt_ms === undefined) return "unknown";
    const loss = link.loss || 0;
    if (loss > 0.08 || (link.rtt_ms || 0) > 400) return "poor";
    if (loss > 0.02 || (link.rtt_ms || 0) > 150) return "fair";
    return "good";
}

/** Writes one site's state into its row (only what changed). @param {SiteRow} r */
function paint(r) {
    const s = r.state;
    const status = s.speaking ? tr("state.speaking") : tr(s.online ? "state.online" : "state.offline");
    r.row.dataset.online = String(s.online);
    r.row.dataset.speaking = String(s.speaking);
    r.dot.dataset.level = s.online ? linkLevel(s.link) : "down";
    if (r.status.textContent !== status) r.status.textContent = status;
    const session = s.session || s.room || "";
    if (r.session.textContent !== session) r.session.textContent = session;
    const link = s.online ? linkText(s.link) : tr("link.none");
    if (r.link.textContent !== link) r.link.textContent = link;
}

/** @param {SiteState} site @param {HTMLElement} body */
function addRow(site, body) {
    const row = el("tr");
    row.dataset.code = site.code;
    const nameCell = el("th", "", "site-name");
    nameCell.scope = "row";
    nameCell.append(el("span", site.name || site.code), el("small", ` ${site.code}`));
    const stateCell = el("td");
    const dot = el("span", undefined, "q");
    dot.setAttribute("aria-hidden", "true");
    const status = el("span");
    stateCell.append(dot, status);
    const session = el("td");
    const link = el("td", "", "link");
    row.append(nameCell, stateCell, session, link);
    body.append(row);
    const r = { state: site, row, dot, status, session, link, name: `${site.name || ""} ${site.code}`.toLowerCase() };
    rows.set(site.code, r);
    paint(r);
}

function tableHead() {
    const table = el("table", undefined, "sites");
    const head = el("tr");
    for (const key of /** @type {const} */ (["dash.site", "dash.state", "dash.session", "dash.link"])) {
        const th = el("th", tr(key));
        th.scope = "col";
        th.dataset.c = key;
        head.append(th);
    }
    table.createTHead().append(head);
    return table;
}

/** Builds the whole tree once, from a snapshot. @param {SiteState[]} sites */
function buildTree(sites) {
    rows.clear();
    groupCounters.clear();
    treeEl.replaceChildren();
    const byParent = new Map();
    for (const site of sites) {
        const list = byParent.get(site.parent) || [];
        list.push(site);
        byParent.set(site.parent, list);
    }
    const codes = new Set(sites.map((s) => s.code));
    const top = sites.filter((s) => !s.parent || !codes.has(s.parent));
    const fragment = document.createDocumentFragment();
    for (const root of top) {
        if (root.kind === "center") {
            const table = tableHead();
            const body = table.createTBody();
            addRow(root, body);
            fragment.append(table);
            for (const institute of byParent.get(root.code) || []) addGroup(institute, byParent, fragment);
        } else {
            addGroup(root, byParent, fragment);
        }
    }
    treeEl.append(fragment);
    recount();
}

/**
 * An institute and its stations, folded in a <details>.
 * @param {SiteState} institute @param {Map<any, SiteState[]>} byParent @param {DocumentFragment} into
 */
function addGroup(institute, byParent, into) {
    const details = el("details", undefined, "group");
    details.open = true;
    const summary = el("summary");
    const counter = el("span", "", "count");
    summary.append(el("span", institute.name || institute.code), counter);
    details.append(summary);
    const table = tableHead();
    const body = table.createTBody();
    addRow(institute, body);
    for (const station of byParent.get(institute.code) || []) addRow(station, body);
    details.append(table);
    groupCounters.set(institute.code, counter);
    into.append(details);
}

function recount() {
    let online = 0;
    /** @type {Map<string, [number, number]>} */
    const groups = new Map();
    for (const r of rows.values()) {
        if (r.state.online) online += 1;
        const group = r.state.kind === "institute" ? r.state.code : r.state.parent || "";
        const counts = groups.get(group) || [0, 0];
        counts[0] += r.state.online ? 1 : 0;
        counts[1] += 1;
        groups.set(group, counts);
    }
    for (const [code, counter] of groupCounters) {
        const [n, total] = groups.get(code) || [0, 0];
        counter.textContent = ` ${n}/${total}`;
    }
    /** @type {HTMLElement} */ (document.getElementById("online-count")).textContent = tr("dash.online", {
        n: online,
        total: rows.size,
    });
}

function applyFilter() {
    const text = filterEl.value.trim().toLowerCase();
    const onlyOnline = onlyOnlineEl.checked;
    for (const r of rows.values()) {
        r.row.hidden = (text !== "" && !r.name.includes(text)) || (onlyOnline && !r.state.online);
    }
}

/** Queues changes; they are painted together on the next frame. @param {SiteState[]} sites */
function queue(sites) {
    for (const site of sites) pending.set(site.code, site);
    if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
    frame = 0;
    for (const [code, change] of pending) {
        const r = rows.get(code);
        if (!r) continue;
        r.state = { ...r.state, ...change };
        paint(r);
    }
    pending.clear();
    recount();
    if (onlyOnlineEl.checked) applyFilter();
}

/* --- statistics: inline SVG bar charts --- */

const SVG = "http://www.w3.org/2000/svg";

/**
 * A horizontal bar chart.
 * @param {string} title
 * @param {{label: string, value: number, text?: string}[]} data
 */
function barChart(title, data) {
    const figure = el("figure", undefined, "chart");
    figure.append(el("figcaption", title));
    if (!data.length) {
        figure.append(el("p", tr("stats.empty"), "hint"));
        return figure;
    }
    const max = Math.max(1, ...data.map((d) => d.value));
    const rowHeight = 22;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 320 ${data.length * rowHeight}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `${title}: ${data.map((d) => `${d.label} ${d.text ?? d.value}`).join(", ")}`);
    data.forEach((d, i) => {
        const y = i * rowHeight;
        const label = document.createElementNS(SVG, "text");
        label.setAttribute("x", "0");
        label.setAttribute("y", String(y + 15));
        label.textContent = d.label.length > 9 ? `${d.label.slice(0, 9)}…` : d.label;
        const bar = document.createElementNS(SVG, "rect");
        bar.setAttribute("x", "120");
        bar.setAttribute("y", String(y + 4));
        bar.setAttribute("height", "14");
        bar.setAttribute("width", String(Math.max(1, (d.value / max) * 150)));
        const value = document.createElementNS(SVG, "text");
        value.setAttribute("x", String(126 + (d.value / max) * 150));
        value.setAttribute("y", String(y + 15));
        value.textContent = d.text ?? String(d.value);
        svg.append(label, bar, value);
    });
    figure.append(svg);
    return figure;
}

function renderStatistics() {
    const box = /** @type {HTMLElement} */ (document.getElementById("stats"));
    if (!statistics) return;
    const s = statistics;
    const p = s.participants;
    const replays = p.library_replays
        ? tr("stats.replays", { n: Object.values(p.library_replays).reduce((a, b) => Number(a) + Number(b), 0) })
        : tr("stats.noLibrary");
    const facts = el("ul", undefined, "plain");
    facts.append(
        el("li", tr("stats.siteJoins", { n: p.site_joins })),
        el("li", tr("stats.viewersN", { n: p.household_viewers })),
        el("li", replays),
    );
    const participation = el("figure", undefined, "chart");
    participation.append(el("figcaption", tr("stats.participants")), facts);
    box.replaceChildren(
        barChart(tr("stats.theme"), s.per_theme.map((/** @type {any} */ r) => ({ label: r.label, value: r.count }))),
        barChart(tr("stats.month"), s.per_month.map((/** @type {any} */ r) => ({ label: r.month, value: r.count }))),
        barChart(
            tr("stats.site"),
            s.per_site.slice(0, 10).map((/** @type {any} */ r) => ({ label: r.name, value: r.count })),
        ),
        barChart(
            tr("stats.attendance"),
            s.attendance.map((/** @type {any} */ r) => ({
                label: r.name,
                value: r.rate,
                text: `${Math.round(r.rate * 100)}%`,
            })),
        ),
        participation,
    );
}

/* --- directives and escalations --- */

function renderDirectives() {
    const list = /** @type {HTMLElement} */ (document.getElementById("directives"));
    const items = [...directives.values()].sort((a, b) => b.id - a.id);
    if (!items.length) {
        list.replaceChildren(el("li", tr("dispatch.none"), "hint"));
        return;
    }
    list.replaceChildren(
        ...items.map((d) => {
            const read = Object.keys(d.read).length;
            const item = el("li");
            item.dataset.directive = String(d.id);
            item.append(el("strong", d.title), el("span", ` ${tr("dispatch.read", { read, total: read + d.unread.length })}`));
            if (d.unread.length) {
                const names = d.unread.slice(0, 8).map((/** @type {string} */ c) => rows.get(c)?.state.name || c);
                item.append(el("div", tr("dispatch.unread", { sites: names.join("、") + (d.unread.length > 8 ? "…" : "") }), "hint"));
            }
            return item;
        }),
    );
}

/** @param {any} read */
function directiveRead(read) {
    const d = directives.get(read.id);
    if (!d || !d.unread.includes(read.site)) return;
    d.unread = d.unread.filter((/** @type {string} */ c) => c !== read.site);
    d.read[read.site] = read.read_at;
    renderDirectives();
}

async function loadEscalations() {
    const list = /** @type {HTMLElement} */ (document.getElementById("escalations"));
    try {
        const items = await api("/api/escalations");
        list.replaceChildren(
            ...(items.length
                ? items.slice(0, 30).map((/** @type {any} */ e) =>
                      el(
                          "li",
                          `${e.raised_at.slice(11, 16)} ${tr(e.reason === "unread" ? "escalations.unread" : "escalations.item", { site: e.site_name, title: e.title })}`,
                      ),
                  )
                : [el("li", tr("escalations.none"), "hint")]),
        );
    } catch {
        /* shown again at the next poll */
    }
}

/** @param {SubmitEvent} event */
async function dispatch(event) {
    event.preventDefault();
    const form = /** @type {HTMLFormElement} */ (event.target);
    const data = new FormData(form);
    const result = /** @type {HTMLElement} */ (document.getElementById("dispatch-result"));
    const codes = String(data.get("codes") || "")
        .split(/[,，、\s]+/)
        .filter(Boolean);
    try {
        const sent = await api("/api/directives", {
            method: "POST",
            body: {
                title: data.get("title"),
                text: data.get("text"),
                targets: { kind: data.get("kind"), codes },
                read_within_minutes: Number(data.get("read_within")) || null,
            },
        });
        directives.set(sent.id, sent);
        renderDirectives();
        result.textContent = tr("dispatch.sent");
        form.reset();
    } catch (error) {
        result.textContent = tr("error.generic", { reason: String(/** @type {Error} */ (error).message) });
    }
}

function showError(/** @type {unknown} */ error) {
    const banner = /** @type {HTMLElement} */ (document.getElementById("banner"));
    const reason = String(error instanceof Error ? error.message : error);
    banner.textContent =
        error instanceof HttpError && error.status === 403 ? tr("error.forbidden", { reason }) : tr("error.generic", { reason });
    banner.hidden = false;
}

async function main() {
    initLanguage(() => {
        for (const r of rows.values()) paint(r);
        recount();
        renderStatistics();
        renderDirectives();
        loadEscalations();
    });
    await ensureLogin();
    try {
        const snapshot = await api("/api/dashboard");
        buildTree(snapshot.sites);
    } catch (error) {
        showError(error);
        return;
    }
    /** @type {HTMLElement} */ (document.getElementById("app")).hidden = false;
    filterEl.addEventListener("input", applyFilter);
    onlyOnlineEl.addEventListener("change", applyFilter);
    /** @type {HTMLFormElement} */ (document.getElementById("dispatch")).addEventListener("submit", dispatch);
    follow(
        "/api/dashboard/stream",
        {
            // A reconnection starts with a fresh snapshot: patch every row from it.
            snapshot: (data) => queue(data.sites),
            sites: (data) => queue(data.sites),
            directive: (data) => {
                directives.set(data.id, data);
                renderDirectives();
            },
            directive_read: directiveRead,
        },
        showLive,
    );
    for (const d of await api("/api/directives")) directives.set(d.id, d);
    renderDirectives();
    loadEscalations();
    setInterval(loadEscalations, 15000);
    await loadStatistics();
    // Figures move slowly: a minute is fresh enough and costs the server little.
    setInterval(loadStatistics, 60000);
}

async function loadStatistics() {
    try {
        statistics = await api("/api/statistics");
        renderStatistics();
    } catch (error) {
        showError(error);
    }
}

main().catch(showError);
