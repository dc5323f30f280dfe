// @ts-check
/** DOM helpers shared by the pages. */

import { t } from "./i18n.js";

/**
 * @param {string} id
 * @returns {HTMLElement}
 */
export function byId(id) {
    const node = document.getElementById(id);
    if (!node) throw new Error(`missing #${id}`);
    return node;
}

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, string | boolean | number | undefined>} [attrs]
 * @param {(Node | string | null | undefined | false)[]} [children]
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, attrs = {}, children = []) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
        if (value === undefined || value === false) continue;
        if (name === "text") node.textContent = String(value);
        else if (name === "class") node.className = String(value);
        else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
        if (child === null || child === undefined || child === false) continue;
        node.append(child);
    }
    return node;
}

/**
 * Shows a track in a media element (only touching srcObject when it changes).
 * @param {HTMLMediaElement} media
 * @param {MediaStreamTrack | null} track
 */
export function attachTrack(media, track) {
    const current = media.srcObject instanceof MediaStream ? media.srcObject.getTracks()[0] : null;
    if (current === track) return;
    media.srcObject = track ? new MediaStream([track]) : null;
    if (track) media.play().catch(() => {});
}

/**
 * What was pasted into a token box: a bare token, or a whole station link
 * (then its `token` parameter).
 * @param {string} text
 */
export function tokenFromPaste(text) {
    const value = text.trim();
    if (/^https?:\/\//i.test(value)) {
        try {
            const url = new URL(value);
            return url.searchParams.get("token") || new URLSearchParams(url.hash.replace(/^#/, "")).get("token") || "";
        } catch {
            return value;
        }
    }
    return value;
}

const TOKEN_KEY = "practiceHub.token.";

/**
 * The room a join token admits to. Its claims are readable by whoever holds it
 * (only the hub checks the signature); "" when it is not a token.
 * @param {string} token
 */
export function roomOfToken(token) {
    try {
        const payload = (token.split(".")[1] || "").replace(/-/g, "+").replace(/_/g, "/");
        const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
        const claims = JSON.parse(new TextDecoder().decode(bytes));
        return typeof claims.room === "string" ? claims.room : "";
    } catch {
        return "";
    }
}

/**
 * Keeps a join token for this tab only (sessionStorage, by room), never in a URL:
 * not in the address bar, the history, a proxy's or the hub's log.
 * @param {string} room
 * @param {string} token
 */
export function rememberToken(room, token) {
    sessionStorage.setItem(TOKEN_KEY + room, token);
}

/**
 * Keeps a token that a link carried or a person pasted, for this tab, and leaves
 * the address naming the room (`?room=`, unless the path names it) but not the token.
 * @param {string} token
 * @param {string} [room] the room the page is for, when its path names it
 */
export function adoptToken(token, room) {
    const url = new URL(location.href);
    const linked = room || roomOfToken(token);
    if (linked) rememberToken(linked, token);
    url.hash = "";
    url.searchParams.delete("token");
    if (!room && linked) url.searchParams.set("room", linked);
    history.replaceState(null, "", url.pathname + url.search);
    return token;
}

/**
 * The join token for this page: a link's (in its fragment `#token=`, which browsers
 * never send; or an old link's `?token=`), adopted at once; else the one this tab
 * kept for the room.
 * @param {string} [room] the room the page is for, when its path names it
 */
export function takeToken(room) {
    const url = new URL(location.href);
    const fromLink = new URLSearchParams(url.hash.replace(/^#/, "")).get("token") || url.searchParams.get("token");
    if (fromLink) return adoptToken(fromLink, room);
    const wanted = room || url.searchParams.get("room");
    return (wanted && sessionStorage.getItem(TOKEN_KEY + wanted)) || "";
}

/**
 * Shows the connection state in a status element.
 * @param {HTMLElement} node
 * @param {string} state
 */
export function showState(node, state) {
    node.dataset.state = state;
    node.textContent = t(`state.${state}`);
}

/**
 * Plays every received audio track through its own hidden <audio> element.
 * (Video tracks are placed by the page.)
 */
export class AudioSink {
    /** @param {HTMLElement} container */
    constructor(container) {
        this.container = container;
        /** @type {Map<string, HTMLAudioElement>} by track id */
        this.elements = new Map();
        /**
         * Called with true when the browser refuses to play without a click.
         * @type {(blocked: boolean) => void}
         */
        this.onblocked = (blocked) => void blocked;
    }

    /** @param {HTMLAudioElement} audio */
    _play(audio) {
        audio.play().then(
            () => this.onblocked(false),
            (e) => {
                if (e && e.name === "NotAllowedError") this.onblocked(true);
            },
        );
    }

    /** @param {MediaStreamTrack[]} tracks */
    update(tracks) {
        const wanted = new Set(tracks.map((track) => track.id));
        for (const [id, audio] of this.elements) {
            if (!wanted.has(id)) {
                audio.srcObject = null;
                audio.remove();
                this.elements.delete(id);
            }
        }
        for (const track of tracks) {
            if (this.elements.has(track.id)) continue;
            const audio = el("audio", { autoplay: true });
            audio.srcObject = new MediaStream([track]);
            this._play(audio);
            this.container.append(audio);
            this.elements.set(track.id, audio);
        }
    }

    /** Retries playback after a user gesture (autoplay policies). */
    resume() {
        for (const audio of this.elements.values()) this._play(audio);
    }
}

/**
 * Formats the hub's per-participant `stats` entry.
 * @param {{rtt_ms?: number, loss?: number, bitrate_kbps?: number} | undefined} stats
 */
export function formatStats(stats) {
    if (!stats) return "";
    const parts = [];
    if (typeof stats.rtt_ms === "number") parts.push(t("stats.rtt", { v: Math.round(stats.rtt_ms) }));
    if (typeof stats.loss === "number") parts.push(t("stats.loss", { v: (stats.loss * 100).toFixed(1) }));
    if (typeof stats.bitrate_kbps === "number") parts.push(t("stats.bitrate", { v: Math.round(stats.bitrate_kbps) }));
    return parts.join(" · ");
}

/**
 * Good / fair / poor from the hub's figures for one participant.
 * @param {{rtt_ms?: number, loss?: number} | undefined} stats
 * @returns {'good' | 'fair' | 'poor' | 'unknown'}
 */
export function levelOf(stats) {
    if (!stats) return "unknown";
    const rtt = stats.rtt_ms ?? 0;
    const loss = stats.loss ?? 0;
    if (rtt > 400 || loss > 0.08) return "poor";
    if (rtt > 150 || loss > 0.02) return "fair";
    return "good";
}

/**
 * Shows "正在录制" and "直播中" (`#onair-recording`, `#onair-live`) whenever the
 * room is recorded or live for households: people are told when they are captured.
 * @param {{recording?: boolean, live?: boolean} | null} status
 */
export function showOnAir(status) {
    const recording = document.getElementById("onair-recording");
    const live = document.getElementById("onair-live");
    if (recording) recording.hidden = !status?.recording;
    if (live) live.hidden = !status?.live;
}

/** Whether the browser will give us camera and microphone here. */
export function mediaAvailable() {
    return !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
}

/**
 * A short-lived message in the page's live region (`#toast`).
 * @param {string} text
 */
export function toast(text) {
    const region = document.getElementById("toast");
    if (!region) return;
    region.textContent = text;
    region.hidden = false;
    clearTimeout(Number(region.dataset.timer || 0));
    region.dataset.timer = String(setTimeout(() => (region.hidden = true), 6000));
}
