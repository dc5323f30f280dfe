// @ts-check
/**
 * One library item: the HLS player (native HLS in the <video>, the MP4 where the
 * browser has none or HLS fails), its details, a download link, and one view
 * counted at the first play.
 */

import { ApiError, api, formatDuration, initLibraryText, lt, themeLabel } from "./library.js";

/** @typedef {import("./library.js").Item} Item */

const id = decodeURIComponent(location.pathname.replace(/^\/replay\//, "").replace(/\/$/, ""));
const player = /** @type {HTMLVideoElement} */ (document.getElementById("player"));
const problem = /** @type {HTMLElement} */ (document.getElementById("problem"));
const article = /** @type {HTMLElement} */ (document.getElementById("item"));

/** Test and debugging hook. */
const state = {
    /** @type {Item | null} */
    item: null,
    /** @type {'hls' | 'mp4' | null} */
    source: null,
    viewCounted: false,
    /** @type {'replay.notFound' | 'replay.notReady' | 'replay.unplayable' | null} */
    problem: null,
};
Object.assign(window, { practiceHubReplay: state });

/** @param {string} elementId @param {string} text */
function fill(elementId, text) {
    const el = /** @type {HTMLElement} */ (document.getElementById(elementId));
    el.textContent = text;
    // An empty detail row says nothing: hide it.
    const row = el.closest("dl > div");
    if (row instanceof HTMLElement) row.hidden = !text;
}

function render() {
    problem.hidden = state.problem === null;
    if (state.problem) problem.textContent = lt(state.problem);
    const item = state.item;
    article.hidden = !item;
    if (!item) return;
    document.title = `${item.title} · ${lt("replay.title")}`;
    fill("title", item.title);
    fill("theme", themeLabel(item.theme));
    fill("speaker", item.speaker);
    fill("date", item.date);
    /** @type {HTMLTimeElement} */ (document.getElementById("date")).dateTime = item.date;
    fill("duration", formatDuration(item.duration));
    fill("site", item.site);
    fill("views", String(item.views));
    fill("description", item.description);
    /** @type {HTMLElement} */ (document.getElementById("download")).hidden = !item.mp4_url;
    player.hidden = state.source === null; // nothing to play yet: no black box
    const tags = /** @type {HTMLElement} */ (document.getElementById("tags"));
    tags.replaceChildren(
        ...item.tags.map((tag) => {
            const li = document.createElement("li");
            li.textContent = tag;
            return li;
        }),
    );
}

/** @param {Item} item */
function play(item) {
    if (!item.hls_url || !item.mp4_url) return;
    const download = /** @type {HTMLAnchorElement} */ (document.getElementById("download"));
    download.href = item.mp4_url;
    if (item.poster_url) player.poster = item.poster_url;
    const mp4 = item.mp4_url;
    // The HLS playlist where the browser plays it natively; the MP4 (served with
    // Range) otherwise, and if HLS fails to load.
    if (player.canPlayType("application/vnd.apple.mpegurl")) {
        state.source = "hls";
        player.src = item.hls_url;
        player.addEventListener(
            "error",
            () => {
                if (state.source !== "hls") return;
                state.source = "mp4";
                player.src = mp4;
            },
            { once: true },
        );
    } else {
        state.source = "mp4";
        player.src = mp4;
    }
    player.addEventListener("error", () => {
        if (state.source === "mp4") {
            state.problem = "replay.unplayable";
            render();
        }
    });
    player.addEventListener(
        "play",
        () => {
            api(`/api/library/${item.id}/views`, { method: "POST" }).then(() => {
                state.viewCounted = true;
                item.views += 1;
                render();
            }, () => {});
        },
        { once: true },
    );
}

async function start() {
    try {
        const item = /** @type {Item} */ (await api(`/api/library/${encodeURIComponent(id)}`));
        state.item = item;
        if (item.status === "ready") play(item);
        else state.problem = "replay.notReady";
    } catch (e) {
        state.problem = e instanceof ApiError && e.status === 404 ? "replay.notFound" : "replay.unplayable";
    }
    render();
}

initLibraryText("replay.title", render);
void start();
