"""Manifest columns that identify patients are left out of the analysis, so they never reach the store.

Why. A hospital's RIS/PACS export carries patient names, birth dates, accession numbers and MRNs beside the
attributes. Every attribute column is copied into the store and its classes into probe results (a class seen
in too few subjects is listed by value under `merged_classes`), so a name column put every patient's name
into `probe --json`. Such columns are recognised by name (the DICOM PHI elements' usual export spellings)
and dropped, with a warning; one the user declares in the schema is kept, since the declaration says the
name means something else. A text column with a distinct value for nearly every subject is only warned
about: it may be an identifier under an unusual name, or a legitimate fine-grained code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Container

import pandas as pd

log = logging.getLogger(__name__)

# Normalised (lower case, letters and digits only) names of columns that hold direct identifiers.
IDENTIFIER_NAMES = frozenset({
    "name", "patientname", "patientsname", "fullname", "firstname", "lastname", "surname", "givenname",
    "familyname", "birthdate", "dateofbirth", "dob", "patientbirthdate", "birthday", "birthtime",
    "mrn", "medicalrecordnumber", "recordnumber", "patientid", "otherpatientids", "nhsnumber", "ssn",
    "socialsecuritynumber", "insurancenumber", "accession", "accessionnumber", "accessionno", "accno",
    "address", "patientaddress", "street", "zipcode", "postcode", "phone", "telephone", "phonenumber",
    "email", "emailaddress", "referringphysician", "referringphysicianname", "physician", "physicianname",
    "operatorsname", "performingphysicianname", "mothersmaidenname", "patientmotherbirthname",
})
# Normalised names under which a column identifies the subject (the manifest's hint; the importer's metadata).
SUBJECT_LIKE_NAMES = frozenset({"patientid", "patient", "subject", "participant", "participantid", "pid",
                                "mrn", "caseid"})
UNIQUE_SHARE = 0.9  # a text column whose values are distinct for >= 90 % of subjects reads as an identifier
MIN_SUBJECTS = 20


# Parts of a column name that make it an identifier wherever they appear ("PatientID (MRN)", "patient_id_2").
IDENTIFIER_PARTS = ("patientid", "patientname", "patientsname", "medicalrecord", "birthdate", "dateofbirth",
                    "accessionn", "nhsnumber", "socialsecurity")
IDENTIFIER_WORDS = frozenset({"mrn", "ssn", "dob", "accession", "accno"})  # as whole words only


def normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def looks_like_identifier(name: str) -> bool:
    """Whether a column's name says it holds a direct identifier, also under a decorated name."""
    flat = normalised(name)
    words = set(re.findall(r"[a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", name).lower()))
    return (flat in IDENTIFIER_NAMES or any(p in flat for p in IDENTIFIER_PARTS)
            or bool(words & IDENTIFIER_WORDS))


def drop_identifier_columns(table: pd.DataFrame, declared: Container[str], where: str) -> pd.DataFrame:
    """`table` without its undeclared identifier columns (warned, by name); warns of near-unique text ones."""
    dropped = [c for c in table.columns if c not in ("path", "subject_id") and c not in declared
               and looks_like_identifier(str(c))]
    if dropped:
        log.warning(
            "%s: column(s) %s look like patient identifiers (PHI): left out of the analysis and never "
            "written to the store or results; declare a column in the schema to keep it", where,
            ", ".join(repr(c) for c in dropped),
        )
        table = table.drop(columns=dropped)
    subjects = table["subject_id"].nunique() if "subject_id" in table.columns else len(table)
    if subjects >= MIN_SUBJECTS:
        for column in table.columns:
            if column in ("path", "subject_id") or column in declared:
                continue
            values = table[column]
            if pd.api.types.is_numeric_dtype(values) or values.nunique() < UNIQUE_SHARE * subjects:
                continue
            log.warning(
                "%s: column %r has a distinct value for nearly every subject (%d values, %d subjects): if it "
                "identifies patients (a name, an MRN, an accession number), remove it from the manifest; "
                "its values are copied into the store", where, column, values.nunique(), subjects,
            )
    return table
