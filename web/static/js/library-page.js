// @ts-check
// The library page's entry point: a file, as the CSP allows no inline script.
import { startLibrary } from "./library.js";

startLibrary();
