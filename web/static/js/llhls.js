// @ts-check
/**
 * A low-latency HLS player over Media Source Extensions: it follows the hub's
 * LL-HLS playlist part by part (blocking playlist reloads, RFC 8216bis), where a
 * browser's native HLS waits for whole segments and plays seconds behind.
 * No DOM beyond the <video> it is given.
 */

/**
 * One partial segment as the playlist lists it.
 * @typedef {object} Part
 * @property {number} msn       media sequence number of its segment
 * @property {number} index     its place in the segment
 * @property {string} uri
 * @property {boolean} independent  starts with a keyframe
 * @property {string} map       the init section it needs
 */

/** Part names the hub writes: part{msn}.{index}.m4s */
const PART_NAME = /part(\d+)\.(\d+)\.m4s/;

/** How far behind the newest media the player may drift before it jumps ahead (s). */
const MAX_LATENCY = 1.2;
/** Where it lands when it jumps: this much behind the newest media (s). */
const TARGET_LATENCY = 0.4;

/**
 * The parts of a media playlist, in order, each with its init section.
 * @param {string} text
 * @returns {Part[]}
 */
export function parseParts(text) {
    /** @type {Part[]} */
    const parts = [];
    let map = "";
    for (const line of text.split("\n")) {
        if (line.startsWith("#EXT-X-MAP:")) {
            map = attribute(line, "URI");
        } else if (line.startsWith("#EXT-X-PART:")) {
            const uri = attribute(line, "URI");
            const name = PART_NAME.exec(uri);
            if (!name) continue;
            parts.push({
                msn: Number(name[1]),
                index: Number(name[2]),
                uri,
                independent: line.includes("INDEPENDENT=YES"),
                map,
            });
        }
    }
    return parts;
}

/**
 * @param {string} line
 * @param {string} name
 */
function attribute(line, name) {
    const match = new RegExp(`${name}="([^"]*)"`).exec(line);
    return match ? match[1] : "";
}

/**
 * The MSE codec string of an fMP4 init section: avc1 profile/level from its avcC
 * box, AAC-LC when it has an mp4a entry.
 * @param {Uint8Array} init
 * @returns {string | null}
 */
export function codecsOf(init) {
    const find = (/** @type {string} */ type) => {
        const code = [...type].map((c) => c.charCodeAt(0));
        outer: for (let i = 0; i + 4 <= init.length; i++) {
            for (let j = 0; j < 4; j++) if (init[i + j] !== code[j]) continue outer;
            return i;
        }
        return -1;
    };
    const avcC = find("avcC");
    if (avcC < 0) return null;
    const hex = (/** @type {number} */ b) => b.toString(16).padStart(2, "0");
    const video = `avc1.${hex(init[avcC + 5])}${hex(init[avcC + 6])}${hex(init[avcC + 7])}`;
    return find("mp4a") >= 0 ? `${video},mp4a.40.2` : video;
}

export class LowLatencyHls {
    /**
     * @param {HTMLVideoElement} video
     * @param {string} playlistUrl
     */
    constructor(video, playlistUrl) {
        this.video = video;
        this.url = new URL(playlistUrl, location.href);
        this.stopped = false;
        /** @type {SourceBuffer | null} */
        this.buffer = null;
        this.map = "";
    }

    /** MSE with fMP4 H.264 is needed; otherwise use the browser's own HLS. */
    static supported() {
        return typeof MediaSource !== "undefined" && MediaSource.isTypeSupported('video/mp4; codecs="avc1.42e01f"');
    }

    /** Plays until `stop()`; rejects if the stream cannot be played this way. */
    async start() {
        const media = new MediaSource();
        this.video.src = URL.createObjectURL(media);
        await new Promise((resolve) => media.addEventListener("sourceopen", resolve, { once: true }));
        const first = parseParts(await this.fetchText(this.url));
        const start = first.filter((p) => p.independent).pop();
        if (!start) throw new Error("no independent part in the playlist yet");
        const init = await this.fetchBytes(start.map);
        const codecs = codecsOf(init);
        if (!codecs) throw new Error("unknown codecs in the init section");
        this.buffer = media.addSourceBuffer(`video/mp4; codecs="${codecs}"`);
        await this.append(init);
        this.map = start.map;
        let next = { msn: start.msn, index: start.index };
        let parts = first;
        while (!this.stopped) {
            const part = parts.find((p) => p.msn === next.msn && p.index === next.index);
            if (part) {
                await this.play(part);
                next = { msn: part.msn, index: part.index + 1 };
            } else if (parts.some((p) => p.msn > next.msn)) {
                next = { msn: next.msn + 1, index: 0 }; // that segment ended
                continue;
            }
            const blocking = new URL(this.url);
            blocking.searchParams.set("_HLS_msn", String(next.msn));
            blocking.searchParams.set("_HLS_part", String(next.index));
            parts = parseParts(await this.fetchText(blocking));
        }
    }

    /** @param {Part} part */
    async play(part) {
        if (part.map !== this.map) {
            await this.append(await this.fetchBytes(part.map)); // a new epoch (discontinuity)
            this.map = part.map;
        }
        await this.append(await this.fetchBytes(part.uri));
        const video = this.video;
        const ranges = video.buffered;
        if (ranges.length === 0) return;
        const end = ranges.end(ranges.length - 1);
        if (end - video.currentTime > MAX_LATENCY || video.currentTime < ranges.start(0)) {
            video.currentTime = Math.max(ranges.start(ranges.length - 1), end - TARGET_LATENCY);
        }
        if (video.paused) video.play().catch(() => {});
        if (ranges.start(0) < video.currentTime - 30 && this.buffer && !this.buffer.updating) {
            await this.whenIdle(() => this.buffer?.remove(0, video.currentTime - 10));
        }
    }

    /** @param {Uint8Array<ArrayBuffer>} bytes */
    async append(bytes) {
        await this.whenIdle(() => this.buffer?.appendBuffer(bytes));
    }

    /** @param {() => void} action an operation that ends with `updateend` */
    whenIdle(action) {
        return new Promise((resolve, reject) => {
            const buffer = this.buffer;
            if (!buffer) return reject(new Error("no source buffer"));
            buffer.addEventListener("updateend", () => resolve(undefined), { once: true });
            buffer.addEventListener("error", () => reject(new Error("source buffer error")), { once: true });
            action();
        });
    }

    /** @param {URL} url */
    async fetchText(url) {
        const response = await fetch(url, { cache: "no-store" });
        if (!response.ok) throw new Error(`playlist: HTTP ${response.status}`);
        return response.text();
    }

    /**
     * @param {string} uri
     * @returns {Promise<Uint8Array<ArrayBuffer>>}
     */
    async fetchBytes(uri) {
        const response = await fetch(new URL(uri, this.url));
        if (!response.ok) throw new Error(`${uri}: HTTP ${response.status}`);
        return new Uint8Array(await response.arrayBuffer()); // Uint8Array<ArrayBuffer>
    }

    stop() {
        this.stopped = true;
    }
}
