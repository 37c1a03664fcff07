// Reading QR codes with the device's camera. The browser's own BarcodeDetector when it reads
// QR codes (Chrome on Android); elsewhere the vendored qr-scanner decoder, loaded from our
// origin only when the camera is first used (see static/vendor/qr-scanner/VENDORED.md).

const FRAME_GAP_MS = 120;
// The same code held in front of the camera is one scan; it counts again only after it has
// been out of view this long (or another code came in between).
const SAME_CODE_AFTER_MS = 1500;

export function hasCamera() {
  return Boolean(navigator.mediaDevices?.getUserMedia) && window.isSecureContext;
}

async function nativeDetector() {
  if (!("BarcodeDetector" in window)) return null;
  try {
    const formats = await window.BarcodeDetector.getSupportedFormats();
    if (!formats.includes("qr_code")) return null;
  } catch {
    return null;
  }
  const detector = new window.BarcodeDetector({ formats: ["qr_code"] });
  return {
    name: "native",
    read: async (video) => (await detector.detect(video))[0]?.rawValue ?? null,
    close: () => {},
  };
}

async function vendoredDetector() {
  const { default: QrScanner } = await import("/static/vendor/qr-scanner/qr-scanner.min.js");
  // Only reached without a usable BarcodeDetector, so this is qr-scanner's worker.
  const engine = await QrScanner.createQrEngine();
  const canvas = document.createElement("canvas");
  return {
    name: "qr-scanner",
    read: async (video) => {
      try {
        const found = await QrScanner.scanImage(video, {
          qrEngine: engine,
          canvas,
          returnDetailedScanResult: true,
        });
        return found.data || null;
      } catch {
        return null; // "No QR code found" is thrown for every empty frame
      }
    },
    close: () => engine.terminate?.(),
  };
}

/**
 * Show the back camera in `video` and call `onCode(text)` for each QR code read.
 * Returns { stop, decoder }. Throws with a message for the person when there is no camera.
 */
export async function startCamera(video, onCode) {
  if (!hasCamera()) throw new Error("This device or browser offers no camera here.");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: { ideal: "environment" } },
      audio: false,
    });
  } catch (error) {
    throw new Error(
      error?.name === "NotAllowedError"
        ? "The camera is blocked. Allow it for this site in the browser's settings."
        : "The camera could not be started.",
    );
  }
  video.srcObject = stream;
  video.setAttribute("playsinline", "");
  video.muted = true;
  await video.play();
  const decoder = (await nativeDetector()) ?? (await vendoredDetector());

  let running = true;
  let lastCode = null;
  let lastSeenAt = 0;
  async function loop() {
    while (running) {
      const code = video.readyState >= 2 ? await decoder.read(video) : null;
      const now = performance.now();
      if (code && running) {
        if (code !== lastCode || now - lastSeenAt > SAME_CODE_AFTER_MS) onCode(code);
        lastCode = code;
        lastSeenAt = now;
      }
      await new Promise((resolve) => setTimeout(resolve, FRAME_GAP_MS));
    }
  }
  loop();

  return {
    decoder: decoder.name,
    stop() {
      running = false;
      decoder.close();
      for (const track of stream.getTracks()) track.stop();
      video.srcObject = null;
    },
  };
}
