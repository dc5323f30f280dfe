// @ts-check
/**
 * A session's attendance report, for its host and the center: the expected sites,
 * who joined, when and for how long, their roll-call answers, and who is absent —
 * one occurrence at a time, exportable as CSV.
 */

import { api, ensureLogin, initLanguage, tr } from "./command-common.js";
import { byId, el } from "./ui.js";

/**
 * @typedef {{session: any, expected: string[], absent: string[], names: Record<string, string>,
 *            joined: Record<string, {first_join: string | null, seconds: number, here: boolean}>,
 *            rollcall: Record<string, Record<string, {status: string, at: string}>>}} Report
 */

const params = new URLSearchParams(location.search);
const occurrenceSelect = /** @type {HTMLSelectElement} */ (byId("occurrence"));
/** @type {Report | null} */
let report = null;

/** @param {unknown} error */
function showError(error) {
    const banner = byId("banner");
    banner.textContent = tr("error.generic", { reason: String(error instanceof Error ? error.message : error) });
    banner.hidden = false;
}

function render() {
    if (!report) return;
    const r = report;
    const codes = [...new Set([...r.expected, ...Object.keys(r.joined)])].sort();
    const rollcalls = [...new Set(Object.values(r.rollcall).flatMap((answers) => Object.keys(answers)))].sort();
    byId("session-title").textContent = `· ${r.session.title}`;
    byId("counts").textContent = [
        tr("attendance.expected", { n: r.expected.length }),
        tr("attendance.joined", { n: r.expected.filter((code) => code in r.joined).length }),
        tr("attendance.absent", { n: r.absent.length }),
    ].join(" · ");
    byId("report-head").replaceChildren(
        el("tr", {}, [
            el("th", { text: tr("attendance.site") }),
            el("th", { text: tr("attendance.status") }),
            el("th", { text: tr("attendance.firstJoin") }),
            el("th", { text: tr("attendance.minutes") }),
            ...rollcalls.map((_, i) => el("th", { text: tr("attendance.rollcall", { n: i + 1 }) })),
        ]),
    );
    byId("report-rows").replaceChildren(
        ...codes.map((code) => {
            const joined = r.joined[code];
            const status = joined ? (joined.here ? "attendance.here" : "attendance.present") : "attendance.absentMark";
            return el("tr", { "data-site": code, "data-status": joined ? "joined" : "absent" }, [
                el("th", { class: "site-name", text: `${r.names[code] || code}（${code}）` }),
                el("td", { text: tr(/** @type {any} */ (status)) }),
                el("td", { text: joined?.first_join ? joined.first_join.slice(11, 19) : "—" }),
                el("td", { text: joined ? (joined.seconds / 60).toFixed(1) : "0" }),
                ...rollcalls.map((rc) => el("td", { text: tr(/** @type {any} */ (`rollcall.${r.rollcall[code]?.[rc]?.status || "absent"}`)) })),
            ]);
        }),
    );
}

async function showOccurrence() {
    const room = occurrenceSelect.value;
    if (!room) return;
    report = await api(`/api/attendance/${encodeURIComponent(room)}`);
    const csv = /** @type {HTMLAnchorElement} */ (byId("csv"));
    csv.href = `/api/attendance/${encodeURIComponent(room)}.csv`;
    csv.download = `attendance-${room}.csv`;
    render();
}

async function main() {
    initLanguage(render);
    await ensureLogin();
    byId("app").hidden = false;
    const session = params.get("session");
    /** @type {{room: string, start: string, end: string, ended: boolean}[]} */
    const occurrences = session ? await api(`/api/sessions/${encodeURIComponent(session)}/occurrences`) : [];
    const wanted = params.get("room");
    const now = Date.now();
    const started = occurrences.filter((o) => Date.parse(o.start) <= now);
    const chosen = wanted || (started.length ? started[started.length - 1].room : occurrences[0]?.room);
    occurrenceSelect.replaceChildren(
        ...(occurrences.length ? occurrences : wanted ? [{ room: wanted, start: "", end: "", ended: false }] : []).map(
            (o) => new Option(o.start ? `${o.start.slice(0, 16).replace("T", " ")}` : o.room, o.room, false, o.room === chosen),
        ),
    );
    if (!occurrenceSelect.options.length) {
        byId("counts").textContent = tr("attendance.none");
        return;
    }
    await showOccurrence();
}

occurrenceSelect.addEventListener("change", () => void showOccurrence().catch(showError));
main().catch(showError);
