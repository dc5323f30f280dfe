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

/** The join token from `?token=` (or the `#token=` fragment). */
export function tokenFromLocation() {
    const query = new URLSearchParams(location.search).get("token");
    if (query) return query;
    const hash = new URLSearchParams(location.hash.replace(/^#/, "")).get("token");
    return hash || "";
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
