"""The MRI phantom's tissue table: T1, T2 and ADC of every tissue, and the contrast agents.

Every number is fixed here, with its source, before any model comparison is run; the MRI
images are simulated from these values (``mri_sequences``), never from the CT channels.
docs/phantom.md ("The MRI phantom") shows the same table and the full references.

How the two field strengths are filled in:

- de Bazelaire et al. 2004 (Radiology 230:652) measured liver, muscle, fat and marrow at
  1.5 T and 3 T in the same volunteers; Stanisz et al. 2005 (MRM 54:507) blood at both.
- Lesion T2 at 1.5 T comes from Cieszanowski et al. 2002 (Eur Radiol 12:2273) as a ratio
  to the liver of the same study (their liver: 54 ms), applied to de Bazelaire's liver:
  the lesion-to-liver contrast is theirs, the absolute scale de Bazelaire's. At 3 T the
  ratio is kept (an assumption: the lesion's T2 is taken to fall with B0 like the liver's).
- Lesion T1 comes from a 2020 phase-sensitive inversion-recovery study (EJR Open 8:100312,
  doi 10.1016/j.ejro.2020.100312), whose abstract does not state the field strength; its
  values (they fit the 3 T cut-offs of a 3 T T1-mapping study, BMC Med Imaging 2022,
  doi 10.1186/s12880-022-00873-8) are taken as 3 T values and carried to 1.5 T with
  de Bazelaire's liver ratio 586/809 (T1 shortens at lower B0 like the liver's).
- Free fluid (cyst, necrosis) keeps its T1 and T2 at both field strengths: the relaxation
  of water depends little on B0 between 1.5 T and 3 T.
- ADC does not depend on B0.

Values marked ``assumption`` in ``source`` are not from a measurement table; the docs list
them as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FIELDS_T = (1.5, 3.0)
LIVER_T1_RATIO_3T_TO_15T = 809.0 / 586.0  # de Bazelaire 2004, liver
LIVER_T2_RATIO_3T_TO_15T = 34.0 / 46.0  # de Bazelaire 2004, liver
CIESZANOWSKI_LIVER_T2_MS = 54.0  # the liver of Cieszanowski 2002, the lesions' reference
R2_PRIME_PER_S_AT_15T = 20.0  # reversible dephasing: 1/T2* = 1/T2 + R2', R2' grows with B0
HEMATOCRIT = 0.42  # plasma concentration = blood concentration / (1 - Hct); assumption


@dataclass(frozen=True)
class Tissue:
    """Relaxation and diffusion of one tissue, with the spread between patients.

    ``t1_ms`` and ``t2_ms`` give (1.5 T, 3 T); ``adc_um2_ms`` is the ADC in um^2/ms
    (= 10^-3 mm^2/s); ``pd`` the proton density relative to pure water. The ``*_cv``
    fields are the patient-to-patient coefficients of variation (sd / mean) the source
    reports (0 where it reports none); ``source`` names where the values come from.
    """

    t1_ms: tuple[float, float]
    t2_ms: tuple[float, float]
    adc_um2_ms: float
    pd: float
    t1_cv: float = 0.0
    t2_cv: float = 0.0
    adc_cv: float = 0.0
    source: str = ""

    def t1(self, field_t: float) -> float:
        """T1 (ms) at 1.5 T or 3 T."""
        return self.t1_ms[_field_index(field_t)]

    def t2(self, field_t: float) -> float:
        """T2 (ms) at 1.5 T or 3 T."""
        return self.t2_ms[_field_index(field_t)]


def _field_index(field_t: float) -> int:
    if field_t not in FIELDS_T:
        raise ValueError(f"field strength {field_t} T: the table has 1.5 T and 3 T only")
    return FIELDS_T.index(field_t)


def t2_star_ms(t2_ms: Any, field_t: float) -> Any:
    """T2* from T2: 1/T2* = 1/T2 + R2', R2' = 20 s^-1 x (B0 / 1.5 T) (assumption).

    Gives the liver 24 ms at 1.5 T and 14 ms at 3 T, the order of healthy-liver T2*
    values; with the dynamic series' echo times (about 1-2.5 ms) it matters little.
    """
    r2_prime_per_ms = R2_PRIME_PER_S_AT_15T * (field_t / 1.5) / 1000.0
    return 1.0 / (1.0 / t2_ms + r2_prime_per_ms)


def _t1_from_3t(t1_3t: float) -> tuple[float, float]:
    """(1.5 T, 3 T) T1 of a solid tissue measured at 3 T, with the liver's B0 ratio."""
    return (round(t1_3t / LIVER_T1_RATIO_3T_TO_15T, 1), t1_3t)


def _t2_from_ratio(ratio: float) -> tuple[float, float]:
    """(1.5 T, 3 T) T2 of a lesion given its T2 relative to the liver (Cieszanowski 2002)."""
    return (round(ratio * 46.0, 1), round(ratio * 34.0, 1))


_MALIGNANT_T2 = 85.0 / CIESZANOWSKI_LIVER_T2_MS  # Cieszanowski 2002: malignant 85 +- 17 ms

TISSUES: dict[str, Tissue] = {
    # --- normal tissues ---
    "liver": Tissue(
        (586.0, 809.0),  # de Bazelaire 2004: 586 +- 39 / 809 +- 71 ms
        (46.0, 34.0),  # de Bazelaire 2004: 46 +- 6 / 34 +- 4 ms
        1.23,  # Jain et al. 2018 (EJR Open 5:209): benign mean 1678 / lesion-liver ratio 1.35
        0.71,  # assumption: water content of liver tissue
        t1_cv=0.07,
        t2_cv=0.12,
        adc_cv=0.08,
        source="de Bazelaire 2004; ADC from Jain 2018 (implied); PD assumption",
    ),
    "blood": Tissue(
        (1441.0, 1932.0),  # Stanisz 2005: 1441 +- 120 / 1932 +- 85 ms
        (290.0, 275.0),  # Stanisz 2005: 290 +- 30 / 275 +- 50 ms
        3.0,  # assumption: flowing blood; spin-echo signal is voided anyway (FLOW_VOID)
        0.85,  # assumption
        source="Stanisz 2005; ADC, PD assumption",
    ),
    "muscle": Tissue(
        (856.0, 898.0),  # de Bazelaire 2004, paravertebral muscle: 856 +- 61 / 898 +- 33 ms
        (27.0, 29.0),  # de Bazelaire 2004: 27 +- 8 / 29 +- 4 ms
        1.4,  # assumption
        0.75,  # assumption
        source="de Bazelaire 2004; ADC, PD assumption",
    ),
    "fat": Tissue(
        (343.0, 382.0),  # de Bazelaire 2004, subcutaneous fat: 343 +- 37 / 382 +- 13 ms
        (58.0, 68.0),  # de Bazelaire 2004: 58 +- 4 / 68 +- 4 ms
        0.02,  # assumption: lipid protons barely diffuse
        0.9,  # assumption
        source="de Bazelaire 2004; ADC, PD assumption",
    ),
    "marrow": Tissue(
        (549.0, 586.0),  # de Bazelaire 2004, L4 marrow: 549 +- 52 / 586 +- 73 ms
        (49.0, 49.0),  # de Bazelaire 2004: 49 +- 8 / 49 +- 4 ms
        0.5,  # assumption
        0.8,  # assumption; 60 % of its signal is fat (MARROW_FAT_FRACTION)
        source="de Bazelaire 2004; ADC, PD assumption",
    ),
    "bone": Tissue((1000.0, 1000.0), (1.0, 1.0), 0.1, 0.05, source="assumption: no signal"),
    "air": Tissue((1000.0, 1000.0), (1.0, 1.0), 0.0, 0.0, source="no protons"),
    "fibrosis": Tissue(  # cirrhotic septa, FNH scar: oedematous fibrous tissue, T2-bright
        (703.2, 970.8),  # assumption: 1.2 x liver
        (59.8, 44.2),  # assumption: 1.3 x liver
        1.23,  # assumption: as liver
        0.8,  # assumption
        source="assumption (1.2 x liver T1, 1.3 x liver T2)",
    ),
    "capsule": Tissue(  # HCC capsule: fibrous, T2 iso to the liver
        (761.8, 1051.7),  # assumption: 1.3 x liver
        (46.0, 34.0),  # assumption: as liver
        1.23,
        0.75,
        source="assumption (1.3 x liver T1)",
    ),
    "necrosis": Tissue(  # tumour necrosis: between tumour and cyst
        (3034.0, 3034.0),  # assumption: 0.8 x cyst, kept at both fields (fluid)
        (200.0, 200.0),  # assumption
        2.0,  # assumption
        0.95,
        t1_cv=0.1,
        t2_cv=0.2,
        adc_cv=0.15,
        source="assumption",
    ),
    # --- lesions ---
    "cyst": Tissue(
        (3793.0, 3793.0),  # EJR Open 2020 PSIR: 3793 +- 207 ms; fluid: same at both fields
        (_t2_from_ratio(583.0 / CIESZANOWSKI_LIVER_T2_MS)[0],) * 2,  # Cieszanowski: 583 ms
        2.93,  # Bian et al. 2007 (World Chin J Digestol 15:2418), b 500/800: 2.93 +- 0.46
        1.0,  # assumption: water
        t1_cv=207.0 / 3793.0,
        t2_cv=0.3,  # Cieszanowski's sd (369 ms) is 63 %; 0.3 keeps every cyst fluid-bright
        adc_cv=0.46 / 2.93,
        source="T1 EJR Open 2020; T2 Cieszanowski 2002; ADC Bian 2007",
    ),
    "hemangioma": Tissue(
        _t1_from_3t(2524.0),  # EJR Open 2020 PSIR: 2524 +- 908 ms
        _t2_from_ratio(155.0 / CIESZANOWSKI_LIVER_T2_MS),  # Cieszanowski: 155 +- 35 ms
        1.7,  # Nam et al. 2012 (Korean J Radiol 13(6)), b 50/400/800: 1.4-1.9 by speed
        0.9,  # assumption
        t1_cv=908.0 / 2524.0,
        t2_cv=35.0 / 155.0,
        adc_cv=0.35 / 1.7,
        source="T1 EJR Open 2020; T2 Cieszanowski 2002; ADC Nam 2012",
    ),
    "fnh": Tissue(
        (673.9, 930.4),  # assumption: 1.15 x liver (slightly T1-hypointense)
        _t2_from_ratio(66.0 / CIESZANOWSKI_LIVER_T2_MS),  # Cieszanowski: 66 +- 7 ms
        1.4,  # assumption: near the liver, above the FNH/HCA cut-off 1.37 (PMID 22143926)
        0.74,  # assumption
        t1_cv=0.08,
        t2_cv=7.0 / 66.0,
        adc_cv=0.12,
        source="T1 assumption; T2 Cieszanowski 2002; ADC assumption",
    ),
    "hcc": Tissue(
        _t1_from_3t(1056.0),  # EJR Open 2020 PSIR: 1056 +- 292 ms
        _t2_from_ratio(_MALIGNANT_T2),  # Cieszanowski: malignant 85 +- 17 ms
        1.09,  # Konosenoka et al. 2025 (Diagnostics 15:1861), b 0/500/1000: 1.09 +- 0.19
        0.8,  # assumption
        t1_cv=292.0 / 1056.0,
        t2_cv=17.0 / 85.0,
        adc_cv=0.19 / 1.09,
        source="T1 EJR Open 2020; T2 Cieszanowski 2002; ADC Konosenoka 2025",
    ),
    "icc": Tissue(
        _t1_from_3t(1757.0),  # assumption: as metastasis (no T1 measurement found)
        _t2_from_ratio(_MALIGNANT_T2),  # Cieszanowski: malignant 85 +- 17 ms
        1.08,  # Konosenoka et al. 2025: ICC 1.08 +- 0.11
        0.8,  # assumption
        t1_cv=0.3,
        t2_cv=17.0 / 85.0,
        adc_cv=0.11 / 1.08,
        source="T1 assumption (as metastasis); T2 Cieszanowski 2002; ADC Konosenoka 2025",
    ),
    "metastasis": Tissue(
        _t1_from_3t(1757.0),  # EJR Open 2020 PSIR: 1757 +- 723 ms
        _t2_from_ratio(_MALIGNANT_T2),  # Cieszanowski: malignant 85 +- 17 ms
        0.86,  # Radiol Oncol study (GI adenocarcinoma metastases, median 861 x 10^-6)
        0.8,  # assumption
        t1_cv=0.3,  # the study's sd (723 ms, 41 %) mixes necrotic lesions; capped
        t2_cv=17.0 / 85.0,
        adc_cv=0.15,
        source="T1 EJR Open 2020; T2 Cieszanowski 2002; ADC Radiol Oncol (median)",
    ),
}
LESION_TISSUES = ("cyst", "hemangioma", "fnh", "hcc", "icc", "metastasis")
FLOW_VOID = 0.15  # spin-echo (T2w, DWI) signal left in flowing blood: assumption
MARROW_FAT_FRACTION = 0.6  # assumption: adult lumbar marrow


@dataclass(frozen=True)
class Agent:
    """A gadolinium contrast agent: T1 relaxivity in plasma at 37 C at (1.5 T, 3 T), its
    standard dose, and its relaxivity once inside hepatocytes (gadoxetate only)."""

    r1_per_mm_s: tuple[float, float]  # 1/(mM s)
    standard_dose_mmol_kg: float
    hepatobiliary: bool = False
    r1_hepatocyte_per_mm_s: tuple[float, float] = (0.0, 0.0)

    def r1(self, field_t: float) -> float:
        return self.r1_per_mm_s[_field_index(field_t)]

    def r1_hepatocyte(self, field_t: float) -> float:
        return self.r1_hepatocyte_per_mm_s[_field_index(field_t)]


# Rohrer et al. 2005 (Invest Radiol 40:715), plasma at 37 C; doses from the labels
AGENTS: dict[str, Agent] = {
    "gadoterate": Agent((3.6, 3.5), 0.1),
    "gadobutrol": Agent((5.2, 5.0), 0.1),
    "gadopentetate": Agent((4.1, 3.7), 0.1),
    "gadobenate": Agent((6.3, 5.5), 0.1),  # its 3-5 % biliary uptake is not modelled
    # hepatocyte relaxivity: rat liver, as tabulated by the dcmri package (dcmri/const.py;
    # attributed to Ziemian et al., NMR Biomed 2021)
    "gadoxetate": Agent((6.9, 6.2), 0.025, hepatobiliary=True, r1_hepatocyte_per_mm_s=(14.6, 9.8)),
}
