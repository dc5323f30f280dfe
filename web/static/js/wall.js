// @ts-check
/**
 * The center's wall of sites, without the DOM: which sites it holds (those in the
 * room, and those a session expects that are not here), how they filter, page and
 * count by institute. console.js renders it and tells the hub what it shows.
 */

/**
 * A site of the organisation tree, as `GET /api/sites` gives it.
 * @typedef {object} SiteRecord
 * @property {string} code
 * @property {string} name
 * @property {string} kind       center, institute or station
 * @property {string | null} parent
 */

/**
 * A site in the room, as the console sees it.
 * @typedef {object} PresentSite
 * @property {string} identity
 * @property {string} name
 * @property {string} sid
 * @property {boolean} onStage
 * @property {boolean} hand
 * @property {boolean} weak
 */

/**
 * One tile of the wall: a site in the room, or one expected and not here (`sid` null).
 * @typedef {object} WallSite
 * @property {string} identity
 * @property {string} name
 * @property {string} institute   its institute's code; "" when the tree does not say
 * @property {string | null} sid
 * @property {boolean} onStage
 * @property {boolean} hand
 * @property {boolean} weak
 */

/**
 * What the pages show: sites off stage in the room (`online`), those of them with a
 * hand raised or a weak link, or the expected sites not here; of one institute or all.
 * @typedef {'online' | 'hand' | 'weak' | 'offline'} WallShow
 * @typedef {{show: WallShow, institute: string}} WallFilter
 */

export const PAGE_SIZES = [4, 9, 16, 25, 36];
/** The hub's default view is the first 25 sites off stage too (PROTOCOL.md, `view`). */
export const DEFAULT_PAGE_SIZE = 25;

/**
 * The institute a site belongs to: itself, or its nearest institute above it; "" for
 * the center and for codes the tree does not hold.
 * @param {string} code
 * @param {Map<string, SiteRecord>} tree
 */
export function instituteOf(code, tree) {
    const seen = new Set();
    let site = tree.get(code);
    while (site && !seen.has(site.code)) {
        if (site.kind === "institute") return site.code;
        seen.add(site.code);
        site = site.parent ? tree.get(site.parent) : undefined;
    }
    return "";
}

/**
 * A site's name without the words every site's name carries
 * ("城关街道新时代文明实践所" → "城关街道所"), for the narrow places of the wall.
 * @param {string} name
 */
export function shortName(name) {
    return name.replace("新时代文明实践", "") || name;
}

/**
 * Every tile of the wall, sorted by site code (so that a page keeps its sites while
 * hands go up and down): the sites present, then the expected ones not here.
 * @param {PresentSite[]} present
 * @param {string[]} expected   identities a session expects
 * @param {Map<string, SiteRecord>} tree
 * @returns {WallSite[]}
 */
export function wallSites(present, expected, tree) {
    /** @type {Map<string, WallSite>} */
    const sites = new Map();
    for (const p of present) sites.set(p.identity, { ...p, institute: instituteOf(p.identity, tree) });
    for (const identity of expected) {
        if (sites.has(identity)) continue;
        sites.set(identity, {
            identity,
            name: tree.get(identity)?.name || identity,
            institute: instituteOf(identity, tree),
            sid: null,
            onStage: false,
            hand: false,
            weak: false,
        });
    }
    return [...sites.values()].sort((a, b) => (a.identity < b.identity ? -1 : a.identity > b.identity ? 1 : 0));
}

/**
 * The sites the pages hold under a filter. Sites on stage are never paged: the stage
 * is always shown, large, above the pages.
 * @param {WallSite[]} sites
 * @param {WallFilter} filter
 */
export function filterSites(sites, filter) {
    return sites.filter((s) => {
        if (filter.institute && s.institute !== filter.institute) return false;
        if (filter.show === "offline") return s.sid === null;
        if (s.sid === null || s.onStage) return false;
        if (filter.show === "hand") return s.hand;
        if (filter.show === "weak") return s.weak;
        return true;
    });
}

/**
 * One page of a list: the page number is kept within the pages there are.
 * @template T
 * @param {T[]} list
 * @param {number} size
 * @param {number} page   0-based
 * @returns {{items: T[], page: number, pages: number}}
 */
export function pageOf(list, size, page) {
    const pages = Math.max(1, Math.ceil(list.length / size));
    const kept = Math.min(Math.max(0, page), pages - 1);
    return { items: list.slice(kept * size, (kept + 1) * size), page: kept, pages };
}

/**
 * Each institute's sites in the room against all its sites on the wall (those here
 * and those expected), by institute code.
 * @param {WallSite[]} sites
 * @returns {{institute: string, online: number, total: number}[]}
 */
export function instituteCounts(sites) {
    /** @type {Map<string, {institute: string, online: number, total: number}>} */
    const counts = new Map();
    for (const s of sites) {
        if (!s.institute) continue;
        let count = counts.get(s.institute);
        if (!count) counts.set(s.institute, (count = { institute: s.institute, online: 0, total: 0 }));
        count.total += 1;
        if (s.sid !== null) count.online += 1;
    }
    return [...counts.values()].sort((a, b) => (a.institute < b.institute ? -1 : 1));
}

/**
 * A page size the operator chose before, else the default.
 * @param {string | null} stored
 */
export function pageSizeFrom(stored) {
    const size = Number(stored);
    return PAGE_SIZES.includes(size) ? size : DEFAULT_PAGE_SIZE;
}
