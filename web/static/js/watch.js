// @ts-check
/**
 * The household viewer: no account. Plays the room's stage over WHEP today;
 * when the hub reports the room live for households (`hls_url` in
 * `GET /api/rooms/{room}`), plays that HLS in the plain <video> instead.
 */

import { LowLatencyHls } from "./llhls.js";
import { WhepError, WhepSession, backoffDelay, fetchRoomStatus } from "./protocol.js";
import { initI18n, onLangChange, t } from "./i18n.js";
import { byId, showOnAir, takeToken } from "./ui.js";

initI18n();

const player = /** @type {HTMLVideoElement} */ (byId("player"));
const statusNode = byId("status");
const unmuteButton = /** @type {HTMLButtonElement} */ (byId("unmute"));
const videoCapSelect = /** @type {HTMLSelectElement} */ (byId("video-cap"));
/** @type {import("./protocol.js").VideoCap} the household's own cap (kept across sessions) */
let videoCap = "auto";
const room = decodeURIComponent(location.pathname.replace(/^\/watch\//, "").replace(/\/$/, ""));
/** A private viewer link's token (its fragment), taken out of the address at once. */
const viewerToken = takeToken(room);
byId("room-name").textContent = room ? `· ${room}` : "";

/** @typedef {'waiting' | 'webrtc' | 'hls' | 'retry'} Mode */

/** Test and debugging hook. */
const state = {
    /** @type {Mode} */
    mode: "waiting",
    /** @type {WhepSession | null} */
    session: null,
    /** @type {string | null} */
    hlsUrl: null,
    /** Live HLS plays part by part (Media Source Extensions), not natively. */
    lowLatency: false,
    attempts: 0,
};
Object.assign(window, { practiceHub: state });

/** @param {Mode} mode */
function setMode(mode) {
    state.mode = mode;
    renderStatus();
}

function renderStatus() {
    const key = {
        waiting: "watch.waiting",
        webrtc: "watch.webrtc",
        hls: "watch.hls",
        retry: "watch.retry",
    }[state.mode];
    statusNode.textContent = t(key);
    statusNode.dataset.state = state.mode === "webrtc" || state.mode === "hls" ? "joined" : "connecting";
}

/** @type {LowLatencyHls | null} */
let lowLatency = null;

/**
 * The id the hub counts this household's player by: random, kept for the tab's
 * life, so a reload is the same household (not a new one).
 */
function playerId() {
    const key = "practiceHub.player";
    let id = "";
    try {
        id = sessionStorage.getItem(key) || "";
    } catch {
        /* storage refused: a fresh id each load */
    }
    if (!/^[0-9a-f]{24}$/.test(id)) {
        id = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
        try {
            sessionStorage.setItem(key, id);
        } catch {
            /* counted anew after a reload, no worse */
        }
    }
    return id;
}

/**
 * @param {string} hlsUrl  the playlist; the player's id goes on playlist requests only
 *     (media files stay one URL for every household, for a shared cache)
 */
function playHls(hlsUrl) {
    const playlist = new URL(hlsUrl, location.href);
    playlist.searchParams.set("player", playerId());
    const url = playlist.href;
    state.hlsUrl = url;
    for (const audio of audios.values()) audio.remove();
    audios.clear();
    player.srcObject = null;
    if (lowLatency) lowLatency.stop();
    lowLatency = null;
    setMode("hls");
    if (LowLatencyHls.supported()) {
        // Part by part, about half a second behind the lecture; the browser's own
        // HLS (the fallback) plays whole segments, seconds behind.
        const session = new LowLatencyHls(player, url);
        lowLatency = session;
        state.lowLatency = true;
        session.start().catch(() => {
            if (lowLatency !== session || state.mode !== "hls") return;
            lowLatency = null;
            state.lowLatency = false;
            player.src = url;
            player.play().catch(() => {});
        });
        return;
    }
    player.src = url;
    player.play().catch(() => {});
}

// A live playlist answers 503 until it holds enough segments, and a player that
// failed never retries by itself: look again (HLS if still live, else WebRTC).
player.addEventListener("error", () => {
    if (state.mode !== "hls") return;
    state.mode = "retry";
    setTimeout(() => void connect(), 2000);
});

/** How far behind the newest media the player may fall before it skips ahead (s). */
const LIVE_EDGE_SLACK = 6;

// Chromium's native HLS starts at the oldest segment of a live playlist: keep near
// the live edge, as households expect of a live lecture.
setInterval(() => {
    if (state.mode !== "hls" || player.seekable.length === 0) return;
    const edge = player.seekable.end(player.seekable.length - 1);
    if (edge - player.currentTime > LIVE_EDGE_SLACK) player.currentTime = edge - 2;
}, 2000);

/** Sound is on once the viewer asked for it (browsers refuse it before a click). */
let soundOn = false;
const audioBox = byId("audio");
/** @type {Map<string, HTMLAudioElement>} */
const audios = new Map();

/**
 * The picture in the player, each voice in its own <audio> (a media element
 * may play only one of a stream's audio tracks).
 * @param {WhepSession} session
 */
function showSession(session) {
    const video = session.stream.getVideoTracks();
    const current = player.srcObject instanceof MediaStream ? player.srcObject.getVideoTracks() : [];
    if (video.length && current[0] !== video[0]) {
        player.removeAttribute("src");
        player.srcObject = new MediaStream(video.slice(0, 1));
        player.play().catch(() => {});
    }
    const tracks = session.stream.getAudioTracks();
    const wanted = new Set(tracks.map((track) => track.id));
    for (const [id, audio] of audios) {
        if (!wanted.has(id)) {
            audio.srcObject = null;
            audio.remove();
            audios.delete(id);
        }
    }
    for (const track of tracks) {
        if (audios.has(track.id)) continue;
        const audio = document.createElement("audio");
        audio.autoplay = true;
        audio.muted = !soundOn;
        audio.srcObject = new MediaStream([track]);
        audioBox.append(audio);
        audios.set(track.id, audio);
        audio.play().catch(() => {});
    }
}

/** @type {ReturnType<typeof setTimeout> | null} */
let retryTimer = null;

/** @param {number} [atLeastMs] what the hub asked for (Retry-After of a full room) */
function scheduleRetry(atLeastMs = 0) {
    if (retryTimer) clearTimeout(retryTimer);
    const delay = Math.max(atLeastMs, backoffDelay(Math.min(state.attempts++, 4)));
    retryTimer = setTimeout(() => void connect(), delay);
}

async function connect() {
    retryTimer = null;
    const status = await fetchRoomStatus(room);
    showOnAir(status);
    if (status && typeof status.hls_url === "string" && status.hls_url) {
        if (state.session) await state.session.stop();
        state.session = null;
        playHls(status.hls_url);
        return;
    }
    if (state.session) await state.session.stop();
    // Households need no token (the room is open to them); a viewer link may carry one.
    const token = viewerToken || undefined;
    const session = new WhepSession(`/whep/${encodeURIComponent(room)}`, { token });
    state.session = session;
    /** @type {ReturnType<typeof setTimeout> | null} */
    let stalled = null;
    session.onstatechange = (pcState) => {
        if (state.session !== session) return;
        if (stalled) clearTimeout(stalled);
        stalled = null;
        if (pcState === "connected") {
            state.attempts = 0;
            setMode("webrtc");
            if (videoCap !== "auto") session.setVideoCap(videoCap);
        } else if (pcState === "failed" || pcState === "closed") {
            setMode("retry");
            scheduleRetry();
        } else if (pcState === "disconnected") {
            // the hub restarted or the link dropped: start a new session if it lasts
            stalled = setTimeout(() => {
                if (state.session === session) {
                    setMode("retry");
                    scheduleRetry();
                }
            }, 3000);
        }
    };
    session.ontrack = () => {
        if (state.session === session) showSession(session);
    };
    try {
        await session.start();
        showSession(session);
    } catch (e) {
        // 401/403/404: the room is not live (or not open to households) yet.
        const notYet = e instanceof WhepError && [401, 403, 404].includes(e.status);
        setMode(notYet ? "waiting" : "retry");
        if (state.session === session) state.session = null;
        scheduleRetry(e instanceof WhepError ? e.retryAfter * 1000 : 0);
    }
}

/** Switch to HLS when the hub starts publishing it, and follow recording (every 15 s). */
setInterval(async () => {
    const status = await fetchRoomStatus(room);
    showOnAir(status);
    if (state.mode === "hls") return;
    if (status && typeof status.hls_url === "string" && status.hls_url) {
        if (state.session) await state.session.stop();
        state.session = null;
        playHls(status.hls_url);
    }
}, 15000);

unmuteButton.addEventListener("click", () => {
    soundOn = true;
    player.muted = false; // HLS carries its sound in the player
    player.play().catch(() => {});
    for (const audio of audios.values()) {
        audio.muted = false;
        audio.play().catch(() => {});
    }
    unmuteButton.hidden = true;
});

window.addEventListener("pagehide", () => {
    if (state.session) void state.session.stop();
});

onLangChange(renderStatus);
renderStatus();
void connect();

/** The household's cap on the lecturer's picture (the hub's simulcast layers); live
 * HLS has one quality and ignores it. */
videoCapSelect.addEventListener("change", () => {
    const cap = videoCapSelect.value;
    if (cap !== "low" && cap !== "mid" && cap !== "high" && cap !== "auto") return;
    videoCap = cap;
    if (state.session) state.session.setVideoCap(cap);
});
